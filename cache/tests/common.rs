//! Test helpers: a tiny tar writer that can produce any entry, hostile ones included.
#![allow(dead_code)]

use tar::{EntryType, Header};

pub struct Entry<'a> {
    pub path: &'a str,
    pub kind: EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub data: &'a [u8],
    pub link: Option<&'a str>,
    pub dev: (u32, u32),
    pub xattrs: Vec<(&'a str, &'a [u8])>,
}

pub fn e(path: &str, kind: EntryType) -> Entry<'_> {
    Entry {
        path,
        kind,
        mode: if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        },
        uid: 0,
        gid: 0,
        mtime: 1_600_000_000,
        data: b"",
        link: None,
        dev: (0, 0),
        xattrs: Vec::new(),
    }
}

pub fn file<'a>(path: &'a str, data: &'a [u8]) -> Entry<'a> {
    Entry {
        data,
        ..e(path, EntryType::Regular)
    }
}

pub fn dir(path: &str) -> Entry<'_> {
    e(path, EntryType::Directory)
}

pub fn symlink<'a>(path: &'a str, target: &'a str) -> Entry<'a> {
    Entry {
        link: Some(target),
        mode: 0o777,
        ..e(path, EntryType::Symlink)
    }
}

pub fn hardlink<'a>(path: &'a str, target: &'a str) -> Entry<'a> {
    Entry {
        link: Some(target),
        ..e(path, EntryType::Link)
    }
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body_len = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body_len + 1;
    while len.to_string().len() + body_len != len {
        len = len.to_string().len() + body_len;
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

fn raw_name(h: &mut Header, name: &[u8]) {
    let field = &mut h.as_old_mut().name;
    field.fill(0);
    field[..name.len()].copy_from_slice(name);
}

/// Builds an uncompressed tar; names are written raw, so `..` and absolute paths get through.
pub fn tar(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for en in entries {
        if !en.xattrs.is_empty() {
            let mut body = Vec::new();
            for (k, v) in &en.xattrs {
                body.extend(pax_record(&format!("SCHILY.xattr.{k}"), v));
            }
            let mut h = Header::new_ustar();
            raw_name(&mut h, b"PaxHeader");
            h.set_entry_type(EntryType::XHeader);
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            push(&mut out, &h, &body);
        }
        let mut h = Header::new_ustar();
        raw_name(&mut h, en.path.as_bytes());
        h.set_entry_type(en.kind);
        h.set_mode(en.mode);
        h.set_uid(en.uid);
        h.set_gid(en.gid);
        h.set_mtime(en.mtime);
        h.set_size(en.data.len() as u64);
        if let Some(l) = en.link {
            h.set_link_name_literal(l).unwrap();
        }
        if matches!(en.kind, EntryType::Char | EntryType::Block) {
            h.set_device_major(en.dev.0).unwrap();
            h.set_device_minor(en.dev.1).unwrap();
        }
        h.set_cksum();
        push(&mut out, &h, en.data);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn push(out: &mut Vec<u8>, h: &Header, data: &[u8]) {
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0u8, pad));
}
