//! Resolves a Dockerfile/`docker run` `user[:group]` against an image's `/etc/passwd` and `/etc/group`.

use crate::ExecError;

/// Numeric credentials of the process to run, plus its home directory.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResolvedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups, as the OCI spec's `additionalGids` and as the process gets them:
    /// the primary gid first (unless `/etc/group` already lists the user in it), then the
    /// groups of `/etc/group` that list the user, in file order.
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
            additional_gids: vec![0],
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
/// Either file may be missing (`None`): numeric ids still work, a name is then an error. The
/// rules are BuildKit v0.11's (`executor/oci/user.go` over runc's `GetExecUser`), which Docker
/// shares: an empty spec is uid 0; a numeric uid without a passwd entry gets gid 0 and home `/`;
/// an explicit group replaces the primary gid and then `/etc/group` adds no groups (nor is it
/// read when both parts are numbers or `root`); otherwise the supplementary groups are those
/// listing the user by name. The primary gid always leads the supplementary groups.
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
            ..resolve_user("0", passwd, group)?
        });
    }
    if user_part.is_empty() {
        return Err(invalid("the user part is empty"));
    }
    if group_part == Some("") {
        return Err(invalid("the group part is empty"));
    }
    // BuildKit's fast path: two numbers (`root` counting as 0) need neither file.
    let id = |s: &str| if s == "root" { Some(0) } else { numeric(s) };
    if let (Some(uid), Some(gid)) = (id(user_part), group_part.and_then(id)) {
        return Ok(ResolvedUser {
            uid,
            gid,
            additional_gids: vec![gid],
            home: home_of(passwd, uid).unwrap_or_else(|| "/".to_string()),
        });
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

    // runc's `GetExecUser` gives supplementary groups only to the implicit `user` form; BuildKit
    // then puts the primary gid in front when the list lacks it (`ensureAdditionalGids`).
    let mut additional_gids = Vec::new();
    if let (None, Some(name), Some(text)) = (group_part, user_name, group) {
        additional_gids.extend(
            group_entries(text)
                .filter(|g| g.members.contains(&name))
                .map(|g| g.gid),
        );
    }
    if !additional_gids.contains(&gid) {
        additional_gids.insert(0, gid);
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
                additional_gids: vec![1000, 10, 29],
                home: "/home/app".into()
            }
        );
    }

    #[test]
    fn explicit_group_by_name_and_number() {
        let u = resolve_user("app:staff", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 50));
        // runc's rule: an explicit group means no groups from `/etc/group`.
        assert_eq!(u.additional_gids, vec![50]);
        let u = resolve_user("app:4242", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (1000, 4242, vec![4242]));
        // Two numbers are BuildKit's fast path: `/etc/group` is not read.
        let u = resolve_user("1000:1000", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (1000, 1000, vec![1000]));
        assert_eq!(u.home, "/home/app");
        let u = resolve_user("root:root", None, None).unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (0, 0, vec![0]));
    }

    #[test]
    fn numeric_ids_work_without_files() {
        let u = resolve_user("1234:5678", None, None).unwrap();
        assert_eq!(
            u,
            ResolvedUser {
                uid: 1234,
                gid: 5678,
                additional_gids: vec![5678],
                home: "/".into()
            }
        );
        let u = resolve_user("1234", None, None).unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (1234, 0, vec![0]));
    }

    #[test]
    fn numeric_uid_with_entry_uses_its_gid_and_home() {
        let u = resolve_user("1000", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 1000, "/home/app"));
        assert_eq!(u.additional_gids, vec![1000, 10, 29]);
    }

    #[test]
    fn root_and_empty() {
        let u = resolve_user("root", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.home.as_str(), u.additional_gids),
            (0, 0, "/root", vec![0, 10])
        );
        let u = resolve_user("", None, None).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
        assert_eq!(u.additional_gids, vec![0]);
        // No `USER` is uid 0 looked up by number, so root's groups apply.
        let u = resolve_user("", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!(u.additional_gids, vec![0, 10]);
    }

    #[test]
    fn process_lacked_its_primary_group_among_its_groups() {
        // `id` in Docker and BuildKit: `groups=0(root)`, `groups=65534(nogroup)`, `groups=5678`.
        let passwd = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n";
        let group = "root:x:0:\nnogroup:x:65534:\n";
        for (spec, want) in [
            ("0", vec![0]),
            ("nobody", vec![65534]),
            ("1234:5678", vec![5678]),
        ] {
            let u = resolve_user(spec, Some(passwd), Some(group)).unwrap();
            assert_eq!(u.additional_gids, want, "{spec}");
        }
        // Listed in its own primary group: kept where `/etc/group` puts it, not repeated.
        let group = "wheel:x:10:app\napp:x:1000:app\n";
        let u = resolve_user("app", Some(PASSWD), Some(group)).unwrap();
        assert_eq!(u.additional_gids, vec![10, 1000]);
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
