//! Resolves a Dockerfile/`docker run` `user[:group]` against an image's `/etc/passwd` and `/etc/group`.

use crate::ExecError;

/// Numeric credentials of the process to run, plus its home directory.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResolvedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups: those in `/etc/group` that list the user (without the primary gid).
    pub additional_gids: Vec<u32>,
    /// Home directory from `/etc/passwd`, `/` when the user has no entry.
    pub home: String,
}

impl ResolvedUser {
    /// root, as used when an image sets no `USER`.
    pub fn root() -> Self {
        ResolvedUser {
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            home: "/root".to_string(),
        }
    }
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

/// Lines that do not parse are skipped: images carry hand-edited files and the kernel does not care.
fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        let uid = f.next()?.trim().parse().ok()?;
        let gid = f.next()?.trim().parse().ok()?;
        let _gecos = f.next();
        let home = f.next().unwrap_or("");
        if name.is_empty() || name.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name,
            uid,
            gid,
            home,
        })
    })
}

fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines().filter_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        let gid = f.next()?.trim().parse().ok()?;
        let members = f
            .next()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .collect();
        if name.is_empty() || name.starts_with('#') {
            return None;
        }
        Some(GroupEntry { name, gid, members })
    })
}

fn numeric(s: &str) -> Option<u32> {
    if s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// Resolve `user[:group]` (names or numbers) against the image's `/etc/passwd` and `/etc/group`.
///
/// Either file may be missing (`None`): numeric ids still work, a name is then an error. As in
/// Docker, a numeric uid without a passwd entry gets gid 0 and home `/`; an explicit group
/// replaces the primary gid; supplementary groups are those listing the user by name.
pub fn resolve_user(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ResolvedUser, ExecError> {
    let invalid = |reason: &str| ExecError::InvalidUser {
        spec: spec.to_string(),
        reason: reason.to_string(),
    };
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() && group_part.is_none() {
        return Ok(ResolvedUser {
            home: home_of(passwd, 0).unwrap_or_else(|| "/root".to_string()),
            ..ResolvedUser::root()
        });
    }
    if user_part.is_empty() {
        return Err(invalid("the user part is empty"));
    }
    if group_part == Some("") {
        return Err(invalid("the group part is empty"));
    }

    let entry = match numeric(user_part) {
        Some(uid) => passwd.and_then(|t| passwd_entries(t).find(|e| e.uid == uid)),
        None => {
            let found = passwd.and_then(|t| passwd_entries(t).find(|e| e.name == user_part));
            if found.is_none() {
                return Err(ExecError::UnknownUser {
                    kind: "user",
                    name: user_part.to_string(),
                    file: "/etc/passwd",
                });
            }
            found
        }
    };
    let uid = match (numeric(user_part), &entry) {
        (Some(uid), _) => uid,
        (None, Some(e)) => e.uid,
        (None, None) => return Err(invalid("the user is not a number")),
    };
    let user_name = entry.as_ref().map(|e| e.name);
    let home = match &entry {
        Some(e) if !e.home.is_empty() => e.home.to_string(),
        _ => "/".to_string(),
    };

    let gid = match group_part {
        Some(g) => match numeric(g) {
            Some(gid) => gid,
            None => group
                .and_then(|t| group_entries(t).find(|e| e.name == g))
                .map(|e| e.gid)
                .ok_or_else(|| ExecError::UnknownUser {
                    kind: "group",
                    name: g.to_string(),
                    file: "/etc/group",
                })?,
        },
        None => entry.as_ref().map(|e| e.gid).unwrap_or(0),
    };

    // Docker: with an explicit group, supplementary groups are still those listing the user.
    let mut additional_gids = Vec::new();
    if let (Some(name), Some(text)) = (user_name, group) {
        for g in group_entries(text) {
            if g.members.contains(&name) && g.gid != gid && !additional_gids.contains(&g.gid) {
                additional_gids.push(g.gid);
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home,
    })
}

fn home_of(passwd: Option<&str>, uid: u32) -> Option<String> {
    passwd
        .and_then(|t| passwd_entries(t).find(|e| e.uid == uid))
        .map(|e| e.home.to_string())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        # a comment\n\
        broken line\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n\
        nohome:x:1001:1001::\n";
    const GROUP: &str = "root:x:0:\n\
        daemon:x:1:\n\
        wheel:x:10:root,app\n\
        audio:x:29:app\n\
        app:x:1000:\n\
        staff:x:50:other\n";

    #[test]
    fn name_resolves_uid_gid_home_and_groups() {
        let u = resolve_user("app", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!(
            u,
            ResolvedUser {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![10, 29],
                home: "/home/app".into()
            }
        );
    }

    #[test]
    fn explicit_group_by_name_and_number() {
        let u = resolve_user("app:staff", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 50));
        assert_eq!(u.additional_gids, vec![10, 29]);
        let u = resolve_user("app:4242", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 4242));
    }

    #[test]
    fn numeric_ids_work_without_files() {
        let u = resolve_user("1234:5678", None, None).unwrap();
        assert_eq!(
            u,
            ResolvedUser {
                uid: 1234,
                gid: 5678,
                additional_gids: vec![],
                home: "/".into()
            }
        );
        let u = resolve_user("1234", None, None).unwrap();
        assert_eq!((u.uid, u.gid), (1234, 0));
    }

    #[test]
    fn numeric_uid_with_entry_uses_its_gid_and_home() {
        let u = resolve_user("1000", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 1000, "/home/app"));
        assert_eq!(u.additional_gids, vec![10, 29]);
    }

    #[test]
    fn root_and_empty() {
        let u = resolve_user("root", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.home.as_str(), u.additional_gids),
            (0, 0, "/root", vec![10])
        );
        let u = resolve_user("", None, None).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
    }

    #[test]
    fn empty_home_is_slash() {
        let u = resolve_user("nohome", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!(u.home, "/");
    }

    #[test]
    fn unknown_names_are_clear_errors() {
        let e = resolve_user("nobody", Some(PASSWD), Some(GROUP)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("`nobody`"), "{msg}");
        assert!(msg.contains("/etc/passwd"), "{msg}");
        assert!(msg.contains("numeric id"), "{msg}");
        let e = resolve_user("app", None, None).unwrap_err();
        assert!(matches!(e, ExecError::UnknownUser { kind: "user", .. }));
        let e = resolve_user("app:nogroup", Some(PASSWD), Some(GROUP)).unwrap_err();
        assert!(e.to_string().contains("group `nogroup`"), "{e}");
        let e = resolve_user("0:wheel", None, None).unwrap_err();
        assert!(matches!(e, ExecError::UnknownUser { kind: "group", .. }));
    }

    #[test]
    fn malformed_specs() {
        assert!(matches!(
            resolve_user(":0", None, None),
            Err(ExecError::InvalidUser { .. })
        ));
        assert!(matches!(
            resolve_user("0:", None, None),
            Err(ExecError::InvalidUser { .. })
        ));
        // Too big for a u32: treated as a name, which then is unknown.
        assert!(resolve_user("99999999999", None, None).is_err());
    }
}
