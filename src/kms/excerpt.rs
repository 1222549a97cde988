//! Bounded, printable excerpts of client-supplied text, for error messages.
//!
//! A client's text echoed in an error helps it find its mistake, but must
//! neither grow the answer without bound nor carry control characters into
//! logs and terminals. The SigV4 verifier and the policy parser both quote
//! what they refuse through this one function.

/// The most characters of client text an error message quotes.
pub const MAX_EXCERPT_CHARS: usize = 64;

/// `text` cut to [`MAX_EXCERPT_CHARS`] characters (with `...` when cut),
/// control characters replaced by `?`.
pub fn excerpt(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_EXCERPT_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().nth(MAX_EXCERPT_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept() {
        assert_eq!(excerpt("kms:Decrypt"), "kms:Decrypt");
        assert_eq!(excerpt(""), "");
    }

    #[test]
    fn long_text_is_cut_at_the_bound() {
        let exact = "é".repeat(MAX_EXCERPT_CHARS);
        assert_eq!(excerpt(&exact), exact);
        let long = "é".repeat(MAX_EXCERPT_CHARS + 1);
        assert_eq!(excerpt(&long), format!("{exact}..."));
    }

    #[test]
    fn control_characters_become_question_marks() {
        assert_eq!(excerpt("a\nb\r\u{7}c\td"), "a?b??c?d");
    }
}
