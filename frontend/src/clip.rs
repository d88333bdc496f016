//! Keeps error messages readable when they quote hostile input: a quoted word or line is cut to
//! [`QUOTE_CHARS`] characters and a whole message to [`MESSAGE_CHARS`], each cut marked `…`.

use std::borrow::Cow;

/// The most characters of one quoted piece of input an error shows.
pub(crate) const QUOTE_CHARS: usize = 200;

/// The most characters of a whole message (which may list many names).
pub(crate) const MESSAGE_CHARS: usize = 2000;

/// `text` cut to `max` characters, with `…` where it was cut.
pub(crate) fn clip(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => Cow::Borrowed(text),
        Some((end, _)) => Cow::Owned(format!("{}…", &text[..end])),
    }
}

/// The most characters of one piece of a message outside backticks: wording and advice, and
/// the text of the errors it wraps (a registry's answer, an I/O error), which can be long but is
/// not the Dockerfile's input.
const PROSE_CHARS: usize = MESSAGE_CHARS / 2;

/// A message with every piece between backticks cut to [`QUOTE_CHARS`] (and every piece outside
/// them to [`PROSE_CHARS`]), then the whole cut to [`MESSAGE_CHARS`]: the quoted input shrinks,
/// the advice around it stays.
pub(crate) fn clip_message(message: &str) -> Cow<'_, str> {
    if message.len() <= QUOTE_CHARS {
        return Cow::Borrowed(message);
    }
    let pieces: Vec<Cow<'_, str>> = message
        .split('`')
        .enumerate()
        .map(|(i, piece)| clip(piece, if i % 2 == 1 { QUOTE_CHARS } else { PROSE_CHARS }))
        .collect();
    if pieces.iter().all(|p| matches!(p, Cow::Borrowed(_))) {
        return clip(message, MESSAGE_CHARS);
    }
    Cow::Owned(clip(&pieces.join("`"), MESSAGE_CHARS).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_registry_error_lost_its_advice() {
        // A pull error quoted through `Dockerfile:1: cannot resolve image`: the prose between the
        // quoted names is longer than a quote may be, and its advice must survive.
        let prose = "error decoding response body: request or response body error: ".repeat(4);
        let message = format!(
            "cannot resolve image `r/x:v1`: downloading blob `sha256:ab` failed: {prose}; check the network and run the command again"
        );
        let clipped = clip_message(&message);
        assert!(clipped.ends_with("run the command again"), "{clipped}");
    }

    #[test]
    fn short_text_is_left_alone() {
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip_message("`x` is bad: do y"), "`x` is bad: do y");
    }

    #[test]
    fn long_quotes_are_cut_and_the_advice_stays() {
        let word = "é".repeat(10_000_000);
        let message = format!("`{word}` is not a valid stage name: start with a letter");
        let clipped = clip_message(&message);
        assert!(clipped.chars().count() < QUOTE_CHARS + 60, "{clipped}");
        assert!(clipped.starts_with(&format!("`{}…`", "é".repeat(QUOTE_CHARS))));
        assert!(clipped.ends_with(" is not a valid stage name: start with a letter"));
    }

    #[test]
    fn many_short_pieces_are_cut_as_a_whole() {
        let names: Vec<String> = (0..10_000).map(|i| format!("`s{i}`")).collect();
        let message = format!("stages are {}", names.join(", "));
        let clipped = clip_message(&message);
        assert_eq!(clipped.chars().count(), MESSAGE_CHARS + 1);
        assert!(clipped.ends_with('…'));
    }
}
