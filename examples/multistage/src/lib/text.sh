# Text helpers: normalise input into one word per line.

# words: read stdin, print one lower-case word per line (letters, digits and apostrophes).
words() {
    tr 'A-Z' 'a-z' | tr -cs "a-z0-9'" '\n' | grep -v '^$'
}
