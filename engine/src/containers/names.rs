//! Names for containers run without `--name`: Docker's `adjective_surname` style.

const ADJECTIVES: [&str; 16] = [
    "amazing", "brave", "calm", "clever", "eager", "festive", "gentle", "happy", "jolly", "keen",
    "lucid", "nifty", "quirky", "sharp", "tender", "vibrant",
];

const SURNAMES: [&str; 16] = [
    "babbage", "curie", "darwin", "euler", "fermi", "gauss", "hopper", "joliot", "kepler",
    "lovelace", "meitner", "noether", "pasteur", "ritchie", "turing", "wozniak",
];

/// A name from the container id's first bytes, with a number added until `taken` says no.
pub(crate) fn generate(id: &str, taken: &dyn Fn(&str) -> bool) -> String {
    let byte = |i: usize| {
        id.get(i..i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0) as usize
    };
    let base = format!(
        "{}_{}",
        ADJECTIVES[byte(0) % ADJECTIVES.len()],
        SURNAMES[byte(2) % SURNAMES.len()]
    );
    if !taken(&base) {
        return base;
    }
    (2..)
        .map(|n| format!("{base}{n}"))
        .find(|n| !taken(n))
        .unwrap_or(base)
}

/// Docker's rule for `--name`: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub(crate) fn valid(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && name.len() <= 128
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_avoid_taken_ones() {
        let first = generate("00ff", &|_| false);
        assert_eq!(first, "amazing_wozniak");
        let second = generate("00ff", &|n| n == first);
        assert_eq!(second, "amazing_wozniak2");
    }

    #[test]
    fn names_follow_dockers_rule() {
        assert!(valid("web-1.a_b") && valid("a1"));
        assert!(!valid("") && !valid("-x") && !valid("a/b") && !valid("a b"));
    }
}
