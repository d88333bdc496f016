//! http(s) sources (`ADD https://…`): the URL is downloaded into a new snapshot holding one file
//! (mode 0600, owned by root, as BuildKit does), named by the op's `http.filename` attribute, else
//! the server's `Content-Disposition`, else `__unnamed__`; its mtime is the `Last-Modified` time.
//!
//! Cache keys, as BuildKit's: with `--checksum` (`http.checksum`) the content is known before
//! downloading, so the op digest (which holds the URL and the checksum) is the key and a cached
//! result is used without any request. Without it the URL is fetched on every build and the
//! result is keyed by what was downloaded (content digest, name, Last-Modified), so steps that
//! use it are cached while the content stays the same and rebuilt when it changes.

use super::{Inputs, Operation};
use crate::{Output, SolveError, VertexResult, VertexTask};
use futures::future::{BoxFuture, FutureExt};
use kiln_cache::{CachedResult, Store};
use kiln_llb::SourceOp;
use sha2::Digest as _;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

/// Mirrors the frontend's attribute names (BuildKit's).
const HTTP_FILENAME: &str = "http.filename";
const HTTP_CHECKSUM: &str = "http.checksum";
const UNNAMED: &str = "__unnamed__";

/// Whether a source identifier is an http(s) URL.
pub(crate) fn is_http(identifier: &str) -> bool {
    let lower = identifier
        .get(..8)
        .unwrap_or(identifier)
        .to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

fn attr<'a>(s: &'a SourceOp, key: &str) -> Option<&'a str> {
    s.attrs
        .iter()
        .find(|kv| kv.key == key && !kv.value.is_empty())
        .map(|kv| kv.value.as_str())
}

/// Whether the source's content is pinned by a checksum (then it is cached by op digest).
pub(crate) fn is_pinned(s: &SourceOp) -> bool {
    attr(s, HTTP_CHECKSUM).is_some()
}

/// A finished download, in a temp file.
struct Download {
    file: tempfile::NamedTempFile,
    sha256: String,
    name: String,
    mtime: Option<i64>,
}

async fn download(store: &Store, s: &SourceOp) -> Result<Download, SolveError> {
    let url = s.identifier.as_str();
    let fail = |what: String| SolveError::Op(format!("download `{url}`: {what}"));
    // Made only on failure: two of them sit on the per-chunk path.
    let http = |what: &str, source| SolveError::Http {
        what: format!("download `{url}`{what}"),
        source,
    };
    let io = |what: &str, source| SolveError::Io {
        what: format!("download `{url}`: {what}"),
        source,
    };
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| http("", e))?;
    let mut resp = client.get(url).send().await.map_err(|e| {
        SolveError::hinted(
            format!("download `{url}`"),
            e,
            "check the URL and the network",
        )
    })?;
    if !resp.status().is_success() {
        return Err(fail(format!(
            "the server answered `{}`: check the URL",
            resp.status()
        )));
    }
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let name = attr(s, HTTP_FILENAME)
        .map(str::to_string)
        .or_else(|| header("content-disposition").and_then(|v| disposition_filename(&v)))
        .unwrap_or_else(|| UNNAMED.to_string());
    let mtime = header("last-modified").and_then(|v| parse_http_date(&v));
    if name.contains('/') || name == "." || name == ".." || name.contains('\0') {
        return Err(fail(format!(
            "`{name}` is not a file name: the `{HTTP_FILENAME}` attribute must be one path component"
        )));
    }
    let mut file = tempfile::Builder::new()
        .prefix("http-")
        .tempfile_in(store.tmp_dir())
        .map_err(|e| io("cannot make a temp file", e))?;
    let mut sha = sha2::Sha256::new();
    let mut sha384 = checksum_algo(s)
        .filter(|a| *a == "sha384")
        .map(|_| sha2::Sha384::new());
    let mut sha512 = checksum_algo(s)
        .filter(|a| *a == "sha512")
        .map(|_| sha2::Sha512::new());
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| http(": the transfer broke off", e))?
    {
        sha.update(&chunk);
        if let Some(h) = sha384.as_mut() {
            h.update(&chunk);
        }
        if let Some(h) = sha512.as_mut() {
            h.update(&chunk);
        }
        file.write_all(&chunk)
            .map_err(|e| io("cannot write the temp file", e))?;
    }
    let sha256 = format!("sha256:{}", hex::encode(sha.finalize()));
    if let Some(want) = attr(s, HTTP_CHECKSUM) {
        let got = match checksum_algo(s) {
            Some("sha384") => sha384.map(|h| format!("sha384:{}", hex::encode(h.finalize()))),
            Some("sha512") => sha512.map(|h| format!("sha512:{}", hex::encode(h.finalize()))),
            _ => Some(sha256.clone()),
        }
        .unwrap_or_default();
        if got != want {
            return Err(SolveError::Op(format!(
                "checksum of `{url}` does not match: expected `{want}`, got `{got}`: check the URL \
                 serves the file you expect, or update `--checksum`"
            )));
        }
    }
    Ok(Download {
        file,
        sha256,
        name,
        mtime,
    })
}

fn checksum_algo(s: &SourceOp) -> Option<&str> {
    attr(s, HTTP_CHECKSUM).and_then(|c| c.split_once(':').map(|(a, _)| a))
}

/// Puts the download into a new snapshot, as its only file.
fn commit(store: &Store, d: &Download) -> Result<Output, SolveError> {
    let snaps = store.snapshots();
    let snap = snaps.create_mutable(None).map_err(SolveError::from)?;
    let path = snap.fs_dir().join(&d.name);
    let err = SolveError::io(format!("`{}`", path.display()));
    std::fs::copy(d.file.path(), &path).map_err(&err)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(&err)?;
    if let Some(t) = d.mtime {
        let t = filetime::FileTime::from_unix_time(t, 0);
        filetime::set_file_times(&path, t, t).map_err(&err)?;
    }
    snaps.sync(snap.id()).map_err(SolveError::from)?;
    Ok(Output::Snapshot(snap.commit()))
}

/// Runs a pinned (`--checksum`) http source: download, verify, commit.
async fn execute(store: &Store, s: &SourceOp) -> Result<Output, SolveError> {
    let d = download(store, s).await?;
    let store2 = store.clone();
    tokio::task::spawn_blocking(move || commit(&store2, &d))
        .await
        .map_err(SolveError::from)?
}

pub(super) struct Http<'a>(pub &'a SourceOp);

impl Operation for Http<'_> {
    /// An unpinned http source: always fetched, then keyed by what was downloaded.
    fn resolve<'a>(
        &'a self,
        v: &'a VertexTask,
        key: &'a str,
    ) -> Option<BoxFuture<'a, Result<Arc<VertexResult>, SolveError>>> {
        if is_pinned(self.0) {
            return None;
        }
        Some(super::run_fetched(v, fetch(v, self.0, key)).boxed())
    }

    fn execute<'a>(
        &'a self,
        v: &'a VertexTask,
        _inputs: &'a Inputs,
    ) -> BoxFuture<'a, Result<Output, SolveError>> {
        execute(&v.solver.inner.store, self.0).boxed()
    }
}

/// Downloads an unpinned source and keys its result by what came: the cached result when there
/// is one for that content (`true`), else a new one, recorded.
async fn fetch(
    v: &VertexTask,
    s: &SourceOp,
    key: &str,
) -> Result<(VertexResult, bool), SolveError> {
    let store = &v.solver.inner.store;
    let d = download(store, s).await?;
    let mut h = blake3::Hasher::new();
    h.update(b"kiln-http-v1\0");
    h.update(key.as_bytes());
    h.update(b"\0");
    h.update(d.sha256.as_bytes());
    h.update(b"\0");
    h.update(d.name.as_bytes());
    h.update(b"\0");
    h.update(d.mtime.unwrap_or(-1).to_string().as_bytes());
    let content_key = h.finalize().to_hex().to_string();
    if !v.meta.ignore_cache {
        if let Some(hit) = store.index().get(&content_key).map_err(SolveError::from)? {
            if let Some(snap) = hit.snapshot {
                if store.snapshots().fs_dir(snap).is_dir() {
                    return Ok((
                        VertexResult {
                            key: content_key,
                            output: Output::Snapshot(snap),
                            created_unix: hit.created_unix,
                            fresh: false,
                        },
                        true,
                    ));
                }
            }
        }
    }
    let store2 = store.clone();
    let output = tokio::task::spawn_blocking(move || commit(&store2, &d))
        .await
        .map_err(SolveError::from)??;
    let created_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let snapshot = match &output {
        Output::Snapshot(s) => Some(*s),
        _ => None,
    };
    store
        .index()
        .put(
            &content_key,
            &CachedResult {
                snapshot,
                created_unix,
            },
        )
        .map_err(SolveError::from)?;
    Ok((
        VertexResult {
            key: content_key,
            output,
            created_unix,
            fresh: v.meta.ignore_cache,
        },
        false,
    ))
}

/// The file name of a `Content-Disposition: attachment; filename="x"` header, reduced to a safe
/// base name.
fn disposition_filename(v: &str) -> Option<String> {
    let raw = v.split(';').map(str::trim).find_map(|p| {
        let (k, val) = p.split_once('=')?;
        (k.trim().eq_ignore_ascii_case("filename")).then(|| val.trim().trim_matches('"'))
    })?;
    let base = raw.rsplit(['/', '\\']).next().unwrap_or("");
    if base.is_empty() || base == "." || base == ".." || base.contains('\0') {
        None
    } else {
        Some(base.to_string())
    }
}

/// Parses an HTTP date in the preferred IMF-fixdate form (`Sun, 06 Nov 1994 08:49:37 GMT`) to
/// unix seconds; `None` for anything else.
fn parse_http_date(v: &str) -> Option<i64> {
    let parts: Vec<&str> = v.split_whitespace().collect();
    let [_, day, mon, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let day: i64 = day.parse().ok()?;
    let year: i64 = year.parse().ok()?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mon = MONTHS.iter().position(|m| m == mon)? as i64 + 1;
    let hms: Vec<i64> = time
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, s] = hms.as_slice() else {
        return None;
    };
    if !(1..=31).contains(&day) || *h > 23 || *m > 59 || *s > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mon <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mon + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_parse() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("garbage"), None);
    }

    #[test]
    fn content_disposition_names_are_base_names() {
        assert_eq!(
            disposition_filename("attachment; filename=\"report.pdf\"").as_deref(),
            Some("report.pdf")
        );
        assert_eq!(
            disposition_filename("attachment; filename=../../etc/passwd").as_deref(),
            Some("passwd")
        );
        assert_eq!(disposition_filename("attachment; filename=\"..\""), None);
        assert_eq!(disposition_filename("inline"), None);
    }
}
