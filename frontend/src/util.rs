//! Small pure helpers for the frontend: path cleaning, Go-style formatting (BuildKit writes image
//! history with Go's `fmt`), durations, ports and did-you-mean suggestions.

/// Cleans a slash-separated path the way Go's `path.Clean` does: `.` and `..` resolved, repeated
/// slashes collapsed, no trailing slash (except for `/`). `..` never climbs above the root.
pub(crate) fn clean_path(p: &str) -> String {
    let absolute = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    if absolute {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".to_string()
    } else {
        joined
    }
}

/// `p` made absolute against `base` (a directory), then cleaned.
pub(crate) fn join_abs(base: &str, p: &str) -> String {
    if p.starts_with('/') {
        clean_path(p)
    } else {
        clean_path(&format!("/{base}/{p}"))
    }
}

/// Go's `%q` for a string.
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        push_escaped(&mut out, c, '"');
    }
    out.push('"');
    out
}

/// Go's `%q` for an integer (a rune literal).
pub(crate) fn go_quote_rune(n: i64) -> String {
    let c = u32::try_from(n)
        .ok()
        .and_then(char::from_u32)
        .unwrap_or('\u{FFFD}');
    let mut out = String::from("'");
    push_escaped(&mut out, c, '\'');
    out.push('\'');
    out
}

fn push_escaped(out: &mut String, c: char, quote: char) {
    match c {
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        '\r' => out.push_str("\\r"),
        '\u{7}' => out.push_str("\\a"),
        '\u{8}' => out.push_str("\\b"),
        '\u{c}' => out.push_str("\\f"),
        '\u{b}' => out.push_str("\\v"),
        c if c == quote => {
            out.push('\\');
            out.push(c);
        }
        c if (c as u32) < 0x20 || c as u32 == 0x7f => {
            out.push_str(&format!("\\x{:02x}", c as u32));
        }
        c => out.push(c),
    }
}

/// Go's `%q` for a `[]string`: `["a" "b"]`.
pub(crate) fn go_quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", quoted.join(" "))
}

/// Go's `%v` for a `[]string`: `[a b]`.
pub(crate) fn go_list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

const NS_PER_US: u128 = 1_000;
const NS_PER_MS: u128 = 1_000_000;
const NS_PER_S: u128 = 1_000_000_000;

/// Parses a Go duration (`1m30s`, `500ms`, `1.5h`, `0`) into nanoseconds.
pub(crate) fn parse_go_duration(s: &str) -> Result<i128, String> {
    let bad =
        || format!("`{s}` is not a duration: write a number with a unit, like `30s` or `1m30s`");
    let (negative, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += value * unit;
    }
    if !total.is_finite() || total > 9.2e18 {
        return Err(bad());
    }
    let ns = total.round() as i128;
    Ok(if negative { -ns } else { ns })
}

/// Formats nanoseconds like Go's `time.Duration.String`.
pub(crate) fn go_duration(ns: i128) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let sign = if ns < 0 { "-" } else { "" };
    let u = ns.unsigned_abs();
    let body = if u < NS_PER_US {
        format!("{u}ns")
    } else if u < NS_PER_MS {
        format!("{}µs", frac(u, NS_PER_US))
    } else if u < NS_PER_S {
        format!("{}ms", frac(u, NS_PER_MS))
    } else {
        let hours = u / (3600 * NS_PER_S);
        let rem = u % (3600 * NS_PER_S);
        let minutes = rem / (60 * NS_PER_S);
        let secs = rem % (60 * NS_PER_S);
        let mut out = String::new();
        if hours > 0 {
            out.push_str(&format!("{hours}h"));
        }
        if hours > 0 || minutes > 0 {
            out.push_str(&format!("{minutes}m"));
        }
        out.push_str(&format!("{}s", frac(secs, NS_PER_S)));
        out
    };
    format!("{sign}{body}")
}

fn frac(v: u128, unit: u128) -> String {
    let whole = v / unit;
    let rest = v % unit;
    if rest == 0 {
        return whole.to_string();
    }
    let width = unit.to_string().len() - 1;
    let digits = format!("{rest:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// Expands one `EXPOSE` word (`80`, `80/udp`, `8000-8010/tcp`) into `port/proto` keys.
pub(crate) fn parse_port_spec(spec: &str) -> Result<Vec<String>, String> {
    let (ports, proto) = match spec.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!(
            "invalid protocol `{proto}` in `{spec}`: use `tcp`, `udp` or `sctp`"
        ));
    }
    // An `ip:port` prefix is accepted by docker and ignored for images.
    let ports = ports.rsplit_once(':').map_or(ports, |(_, p)| p);
    let parse = |p: &str| -> Result<u16, String> {
        p.parse::<u16>().map_err(|_| {
            format!("invalid port `{p}` in `{spec}`: use a number from 0 to 65535, like `8080/tcp`")
        })
    };
    let (start, end) = match ports.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => {
            let p = parse(ports)?;
            (p, p)
        }
    };
    if end < start {
        return Err(format!(
            "invalid port range `{spec}`: the end is before the start"
        ));
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

/// The candidate closest to `name`, if one is close enough to be a likely typo.
pub(crate) fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            (
                c,
                strsim::normalized_damerau_levenshtein(&name, &c.to_ascii_lowercase()),
            )
        })
        .filter(|(_, score)| *score >= 0.5)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(c, _)| c)
}

/// ` (did you mean `x`?)` or nothing.
pub(crate) fn suggestion<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    did_you_mean(name, candidates)
        .map(|c| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_matches_go() {
        assert_eq!(clean_path("/a/b/../c/./d/"), "/a/c/d");
        assert_eq!(clean_path("/../x"), "/x");
        assert_eq!(clean_path("a//b"), "a/b");
        assert_eq!(clean_path(""), ".");
        assert_eq!(clean_path("/"), "/");
        assert_eq!(join_abs("/app", "."), "/app");
        assert_eq!(join_abs("/app", "../srv"), "/srv");
        assert_eq!(join_abs("/app", "/x/"), "/x");
    }

    #[test]
    fn go_quoting() {
        assert_eq!(go_quote("a\"b\\c\n"), r#""a\"b\\c\n""#);
        assert_eq!(
            go_quote_list(&["cat".into(), "x y".into()]),
            r#"["cat" "x y"]"#
        );
        assert_eq!(go_quote_rune(3), r"'\x03'");
        assert_eq!(go_quote_rune(65), "'A'");
        assert_eq!(go_list(&["/a".into(), "/b".into()]), "[/a /b]");
    }

    #[test]
    fn durations_round_trip_like_go() {
        for (input, want) in [
            ("5s", "5s"),
            ("90s", "1m30s"),
            ("1h", "1h0m0s"),
            ("1.5s", "1.5s"),
            ("500ms", "500ms"),
            ("0", "0s"),
            ("2m0.25s", "2m0.25s"),
        ] {
            let ns = parse_go_duration(input).unwrap();
            assert_eq!(go_duration(ns), want, "{input}");
        }
        assert!(parse_go_duration("5").is_err());
        assert!(parse_go_duration("5x").is_err());
        assert!(parse_go_duration("").is_err());
    }

    #[test]
    fn port_specs() {
        assert_eq!(parse_port_spec("80").unwrap(), vec!["80/tcp"]);
        assert_eq!(parse_port_spec("53/UDP").unwrap(), vec!["53/udp"]);
        assert_eq!(
            parse_port_spec("8000-8002").unwrap(),
            vec!["8000/tcp", "8001/tcp", "8002/tcp"]
        );
        assert!(parse_port_spec("80/icmp").is_err());
        assert!(parse_port_spec("http").is_err());
        assert!(parse_port_spec("90-80").is_err());
    }

    #[test]
    fn suggestions() {
        assert_eq!(did_you_mean("bulid", ["build", "final"]), Some("build"));
        assert_eq!(did_you_mean("zzzzzz", ["build", "final"]), None);
    }
}
