//! Image platforms (`linux/arm64/v8`) and how an index entry is matched against the wanted one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::RegistryError;

/// An OCI platform: GOOS/GOARCH names, as image indexes use them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this process runs on, in Go's names (`x86_64` → `amd64`).
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "386",
            "aarch64" => "arm64",
            "arm" => "arm",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "powerpc64" => "ppc64",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            "loongarch64" => "loong64",
            "mips64" if cfg!(target_endian = "little") => "mips64le",
            other => other,
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: None,
        }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(ok) {
            return Err(RegistryError::InvalidPlatform {
                input: s.to_string(),
            });
        }
        Ok(Platform {
            os: parts[0].to_string(),
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }

    /// Whether an image made for `entry` serves `self` (same rules as picking from an index).
    pub fn matches(&self, entry: &Platform) -> bool {
        self.match_score(entry).is_some()
    }

    /// How well `entry` (from an index) serves `self`: `None` when it does not, higher is better.
    /// An unspecified variant on either side matches any, but an exact variant is preferred;
    /// `arm64` without a variant is `arm64/v8`.
    pub(crate) fn match_score(&self, entry: &Platform) -> Option<u8> {
        if self.os != entry.os || self.architecture != entry.architecture {
            return None;
        }
        let norm = |v: &Option<String>| match (self.architecture.as_str(), v.as_deref()) {
            ("arm64", None) => Some("v8".to_string()),
            (_, v) => v.map(str::to_string),
        };
        let (want, have) = (norm(&self.variant), norm(&entry.variant));
        match (want, have) {
            (Some(w), Some(h)) if w == h => Some(3),
            (Some(_), Some(_)) => None,
            (None, None) => Some(3),
            (Some(_), None) => Some(1),
            (None, Some(_)) => Some(2),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap()
    }

    #[test]
    fn host_uses_go_names() {
        let h = Platform::host();
        assert_eq!(h.os, "linux");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(h.architecture, "amd64");
        #[cfg(target_arch = "aarch64")]
        assert_eq!(h.architecture, "arm64");
    }

    #[test]
    fn parse_and_display_round_trip() {
        for s in ["linux/amd64", "linux/arm64/v8", "windows/amd64"] {
            assert_eq!(p(s).to_string(), s);
        }
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/am d64"] {
            let e = Platform::parse(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
    }

    #[test]
    fn matching_rules() {
        assert_eq!(p("linux/amd64").match_score(&p("linux/amd64")), Some(3));
        assert_eq!(p("linux/amd64").match_score(&p("linux/arm64")), None);
        assert_eq!(p("linux/amd64").match_score(&p("windows/amd64")), None);
        assert_eq!(p("linux/arm64").match_score(&p("linux/arm64/v8")), Some(3));
        assert_eq!(p("linux/arm64/v8").match_score(&p("linux/arm64")), Some(3));
        assert_eq!(p("linux/arm/v7").match_score(&p("linux/arm/v6")), None);
        assert_eq!(p("linux/arm").match_score(&p("linux/arm/v7")), Some(2));
        assert_eq!(p("linux/arm/v7").match_score(&p("linux/arm")), Some(1));
    }
}
