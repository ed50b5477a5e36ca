#!/bin/sh
# run.sh TOOL: checks TOOL's output on fixed inputs; prints one line per check and exits 1 on
# the first failure.
set -eu
tool=$1
here=$(dirname "$0")
failed=0

check() {
    name=$1 expected=$2 actual=$3
    if [ "$expected" = "$actual" ]; then
        echo "ok   $name"
    else
        echo "FAIL $name: expected [$expected], got [$actual]"
        failed=1
    fi
}

check "totals" "lines 3
words 12
chars 51" "$("$tool" --top 0 < "$here/fixture.txt")"
check "top words" "3 the
2 cat" "$("$tool" --top 2 < "$here/fixture.txt" | tail -n 2)"
check "version" "wordstat $(cat VERSION)" "$("$tool" --version)"
check "empty input" "lines 0
words 0
chars 0" "$("$tool" --top 3 < /dev/null)"

[ "$failed" -eq 0 ] && echo "all checks passed"
exit "$failed"
