# Counting helpers over the output of words().

# top N: the N most frequent words, "count word" per line, ties alphabetical.
top() {
    sort | uniq -c | sort -k1,1nr -k2,2 | head -n "$1" | awk '{ print $1, $2 }'
}

# totals FILE: lines, words and characters of FILE, one "name value" per line.
totals() {
    echo "lines $(wc -l < "$1" | tr -d ' ')"
    echo "words $(words < "$1" | wc -l | tr -d ' ')"
    echo "chars $(wc -c < "$1" | tr -d ' ')"
}
