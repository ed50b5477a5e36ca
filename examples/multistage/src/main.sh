# wordstat [--top N] [FILE...]: totals, then the most frequent words of the input.

usage() {
    echo "usage: wordstat [--top N] [FILE...]   (stdin when no FILE)"
    echo "wordstat $WORDSTAT_VERSION: line, word and character totals and the top words"
}

n=5
while [ $# -gt 0 ]; do
    case "$1" in
        --help|-h) usage; exit 0 ;;
        --version) echo "wordstat $WORDSTAT_VERSION"; exit 0 ;;
        --top) n="$2"; shift 2 ;;
        *) break ;;
    esac
done

input=$(mktemp)
trap 'rm -f "$input"' EXIT
cat "$@" > "$input"
totals "$input"
words < "$input" | top "$n"
