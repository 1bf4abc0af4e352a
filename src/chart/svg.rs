//! Writing SVG text by hand: escaping, and numbers with a fixed precision
//! so that the same chart is the same bytes.

use std::borrow::Cow;

/// `s` safe inside SVG/HTML text and double- or single-quoted attributes.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.contains(['&', '<', '>', '"', '\'']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A coordinate with one decimal ("-0.0" written as "0").
pub fn px(v: f64) -> String {
    let s = format!("{v:.1}");
    let s = s.strip_suffix(".0").unwrap_or(&s).to_string();
    if s == "-0" { "0".to_string() } else { s }
}

/// The width of `text` in pixels at `font_px`, estimated: no font metrics
/// in a file written without a browser, so an average sans-serif glyph.
pub fn text_width(text: &str, font_px: f64) -> f64 {
    text.chars().count() as f64 * font_px * 0.58
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(escape("plain text"), "plain text");
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
        assert_eq!(
            escape(r#"<script>alert("x&y")</script> o'k"#),
            "&lt;script&gt;alert(&quot;x&amp;y&quot;)&lt;/script&gt; o&#39;k"
        );
    }

    #[test]
    fn coordinates_are_stable_text() {
        assert_eq!(px(12.0), "12");
        assert_eq!(px(12.34), "12.3");
        assert_eq!(px(-0.01), "0");
    }
}
