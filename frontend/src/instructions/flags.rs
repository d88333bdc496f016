//! Instruction flags (`--from=build`, `--link`): checked against what each instruction accepts,
//! so a typo is an error with a suggestion rather than silently ignored.

use crate::util::suggestion;

/// The flags of one instruction, in the order written.
pub(crate) struct Flags {
    values: Vec<(String, Option<String>)>,
    instruction: String,
}

impl Flags {
    /// Parses `raw` (`--name=value` or `--name`), accepting only the names in `allowed`.
    pub(crate) fn parse(
        instruction: &str,
        raw: &[String],
        allowed: &[&str],
    ) -> Result<Self, String> {
        let upper = instruction.to_ascii_uppercase();
        let mut values = Vec::new();
        for flag in raw {
            let Some(body) = flag.strip_prefix("--") else {
                return Err(format!(
                    "`{flag}` is not a flag of `{upper}`: flags are written `--name=value`"
                ));
            };
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (body.to_string(), None),
            };
            if !allowed.contains(&name.as_str()) {
                let hint = suggestion(&name, allowed.iter().copied());
                let list = if allowed.is_empty() {
                    format!("`{upper}` takes no flags")
                } else {
                    let names: Vec<String> = allowed.iter().map(|a| format!("`--{a}`")).collect();
                    format!("`{upper}` accepts {}", names.join(", "))
                };
                return Err(format!("unknown flag `--{name}`{hint}; {list}"));
            }
            values.push((name, value));
        }
        Ok(Flags {
            values,
            instruction: upper,
        })
    }

    /// The value of a string flag given at most once (the last one wins, as in BuildKit).
    pub(crate) fn string(&self, name: &str) -> Result<Option<&str>, String> {
        match self.values.iter().rev().find(|(n, _)| n == name) {
            None => Ok(None),
            Some((_, Some(v))) => Ok(Some(v.as_str())),
            Some((_, None)) => Err(format!(
                "flag `--{name}` of `{}` needs a value: write `--{name}=VALUE`",
                self.instruction
            )),
        }
    }

    /// Every value of a repeatable string flag.
    pub(crate) fn all(&self, name: &str) -> Result<Vec<&str>, String> {
        let mut out = Vec::new();
        for (n, v) in &self.values {
            if n == name {
                match v {
                    Some(v) => out.push(v.as_str()),
                    None => {
                        return Err(format!(
                            "flag `--{name}` of `{}` needs a value: write `--{name}=VALUE`",
                            self.instruction
                        ))
                    }
                }
            }
        }
        Ok(out)
    }

    /// A boolean flag: `--name`, `--name=true` or `--name=false`.
    pub(crate) fn bool(&self, name: &str) -> Result<bool, String> {
        match self.values.iter().rev().find(|(n, _)| n == name) {
            None => Ok(false),
            Some((_, None)) => Ok(true),
            Some((_, Some(v))) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(format!(
                    "flag `--{name}` of `{}` takes `true` or `false`, not `{v}`",
                    self.instruction
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_values_and_bools() {
        let f = Flags::parse(
            "copy",
            &raw(&["--from=build", "--link", "--exclude=a", "--exclude=b"]),
            &["from", "link", "exclude"],
        )
        .unwrap();
        assert_eq!(f.string("from").unwrap(), Some("build"));
        assert!(f.bool("link").unwrap());
        assert_eq!(f.all("exclude").unwrap(), vec!["a", "b"]);
        assert!(!f.bool("chown").unwrap());
    }

    #[test]
    fn unknown_flag_suggests() {
        let err = Flags::parse("copy", &raw(&["--form=build"]), &["from", "chown"])
            .err()
            .unwrap();
        assert!(err.contains("unknown flag `--form`"), "{err}");
        assert!(err.contains("did you mean `from`"), "{err}");
    }

    #[test]
    fn missing_value_is_an_error() {
        let f = Flags::parse("copy", &raw(&["--from"]), &["from"]).unwrap();
        assert!(f.string("from").unwrap_err().contains("--from=VALUE"));
        let f = Flags::parse("copy", &raw(&["--link=maybe"]), &["link"]).unwrap();
        assert!(f.bool("link").is_err());
    }
}
