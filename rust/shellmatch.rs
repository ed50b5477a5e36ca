//! Matching for the Dockerfile's `${VAR#p}`, `${VAR%p}`, `${VAR/p/r}` and `${VAR//p/r}`.
//!
//! The Python front end translates the glob `p` into a regular expression (literals, `[^\n]`
//! for `?`, `[^\n]*` or `[^\n]*?` for `*`) and asks here for the matches. BuildKit runs that
//! expression through Go's `regexp`, which never backtracks; Python's `re` does, and a pattern
//! with a few stars over a few hundred characters (`${A#*a*a*a*b}`) takes minutes there. The
//! `regex` crate has Go's semantics (leftmost-first: the match a backtracking engine would
//! report) with Go's guarantee (time linear in the text for a given expression), so a hostile
//! Dockerfile costs time in proportion to what it expands, never more.
//!
//! Offsets in and out are in characters (Unicode scalar values), as Python indexes strings.

use regex::{Regex, RegexBuilder};

/// Bound on the compiled size of one expression: a pattern is a Dockerfile word, so this is
/// far above any real one, and it caps what one hostile pattern can make the engine build.
pub const SIZE_LIMIT: usize = 1 << 20;

/// Which matches a caller wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The first (leftmost-first) match, if any.
    First,
    /// The matches Go's `Regexp.ReplaceAllString` replaces: successive non-overlapping
    /// matches, an empty match right after the previous match skipped.
    All,
}

/// Compile an expression the front end built; an error is a message for the user.
pub fn compile(source: &str) -> Result<Regex, String> {
    RegexBuilder::new(source)
        .size_limit(SIZE_LIMIT)
        .dfa_size_limit(SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => "pattern is too large to match".to_string(),
            other => other.to_string(),
        })
}

/// The matches of `re` in `text` selected by `mode`, as `(start, end)` character offsets.
pub fn spans(re: &Regex, text: &str, mode: Mode) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut chars = CharOffsets::new(text);
    match mode {
        Mode::First => {
            if let Some(m) = re.find(text) {
                let start = chars.at(m.start());
                out.push((start, chars.at(m.end())));
            }
        }
        Mode::All => {
            // Go's loop (regexp.go replaceAll), in bytes; a step of one is one character.
            let mut last_end = 0usize;
            let mut search = 0usize;
            while search <= text.len() {
                let Some(m) = re.find_at(text, search) else {
                    break;
                };
                let (start, end) = (m.start(), m.end());
                if end > last_end || start == 0 {
                    let s = chars.at(start);
                    out.push((s, chars.at(end)));
                }
                last_end = end;
                let width = text[search..].chars().next().map_or(1, char::len_utf8);
                search = if search + width > end {
                    search + width
                } else {
                    end
                };
            }
        }
    }
    out
}

/// Byte offsets to character offsets, for offsets asked in increasing order (amortised O(n)).
struct CharOffsets<'a> {
    text: &'a str,
    byte: usize,
    chars: usize,
}

impl<'a> CharOffsets<'a> {
    fn new(text: &'a str) -> Self {
        CharOffsets {
            text,
            byte: 0,
            chars: 0,
        }
    }

    fn at(&mut self, byte: usize) -> usize {
        if byte < self.byte {
            return self.text[..byte].chars().count();
        }
        self.chars += self.text[self.byte..byte].chars().count();
        self.byte = byte;
        self.chars
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn all(source: &str, text: &str) -> Vec<(usize, usize)> {
        spans(&compile(source).unwrap(), text, Mode::All)
    }

    #[test]
    fn first_match_is_leftmost_first_in_characters() {
        let re = compile(r"\x{e9}[^\n]*?b").unwrap();
        assert_eq!(spans(&re, "aébéb", Mode::First), vec![(1, 3)]);
        let greedy = compile(r"\x{e9}[^\n]*b").unwrap();
        assert_eq!(spans(&greedy, "aébéb", Mode::First), vec![(1, 5)]);
        assert_eq!(spans(&greedy, "aé\nb", Mode::First), vec![]);
    }

    #[test]
    fn replace_all_skips_an_empty_match_right_after_a_match() {
        // Go: regexp.MustCompile("a*").ReplaceAllString("baaac", "X") == "XbXcX"
        assert_eq!(all("a*", "baaac"), vec![(0, 0), (1, 4), (5, 5)]);
        // and with an empty pattern, every position
        assert_eq!(all("", "ab"), vec![(0, 0), (1, 1), (2, 2)]);
        assert_eq!(all("", ""), vec![(0, 0)]);
        assert_eq!(all("é", "éaé"), vec![(0, 1), (2, 3)]);
    }

    #[test]
    fn hostile_patterns_run_in_linear_time() {
        let text = "a".repeat(200_000);
        let source = "^".to_string() + &r"[^\n]*?\x{61}".repeat(30) + r"[^\n]*?\x{62}";
        let started = Instant::now();
        assert!(spans(&compile(&source).unwrap(), &text, Mode::First).is_empty());
        let unanchored = r"[^\n]*\x{61}".repeat(30) + r"[^\n]*\x{62}";
        assert!(all(&unanchored, &text).is_empty());
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn oversized_patterns_are_refused() {
        let source = r"[^\n]?".repeat(200_000);
        assert_eq!(
            compile(&source).unwrap_err(),
            "pattern is too large to match"
        );
    }
}
