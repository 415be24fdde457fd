//! The one bound both ends put on a forwarded log line: the SDK cuts before
//! sending, the master cuts whatever arrives.

/// Longest log line kept or forwarded, in bytes (longer ones are cut and
/// marked with `…`).
pub const MAX_LOG_LINE: usize = 1024;

/// `text` cut at [`MAX_LOG_LINE`] bytes, on a character boundary.
pub fn cut(mut text: String) -> String {
    if text.len() > MAX_LOG_LINE {
        let mut end = MAX_LOG_LINE;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_line_is_cut_on_a_character_boundary() {
        assert_eq!(cut("short".into()), "short");
        let long = "é".repeat(MAX_LOG_LINE);
        let cut = cut(long);
        assert!(cut.len() <= MAX_LOG_LINE + '…'.len_utf8() && cut.ends_with('…'));
    }
}
