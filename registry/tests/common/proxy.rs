//! A fault-injecting HTTP/1.1 proxy for one upstream (the real registry): one request per
//! connection, and per matching request it can answer a status itself (500, 429 with
//! `Retry-After`), cut the response body after some bytes, flip one body byte, or cut the
//! request body on its way up (an interrupted upload).

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer this status (no body), with `Retry-After: secs` when given.
    Status(u16, Option<u32>),
    /// Forward this many bytes of the response body, then drop the connection.
    CutResponseAfter(usize),
    /// Flip the bits of the response body byte at this offset.
    Corrupt(usize),
    /// Forward this many bytes of the request body upstream, then drop both connections.
    CutRequestAfter(usize),
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub method: &'static str,
    pub path_contains: String,
    pub fault: Fault,
    /// How many matching requests get the fault.
    pub times: usize,
}

#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
}

pub struct Proxy {
    pub port: u16,
    rules: Arc<Mutex<Vec<Rule>>>,
    log: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let rules: Arc<Mutex<Vec<Rule>>> = Arc::default();
        let log: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (r2, l2) = (rules.clone(), log.clone());
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (rules, log) = (r2.clone(), l2.clone());
                tokio::spawn(async move {
                    let _ = handle(sock, upstream, rules, log).await;
                });
            }
        });
        Proxy {
            port,
            rules,
            log,
            task,
        }
    }

    pub fn add(&self, method: &'static str, path_contains: &str, fault: Fault, times: usize) {
        self.rules.lock().unwrap().push(Rule {
            method,
            path_contains: path_contains.to_string(),
            fault,
            times,
        });
    }

    pub fn clear(&self) {
        self.rules.lock().unwrap().clear();
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_head(sock: &mut TcpStream) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16 << 10];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Ok(Some((buf, rest)));
        }
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The head with any `Connection` header replaced by `Connection: close`.
fn closing(head: &str) -> String {
    let mut out = String::new();
    for (i, l) in head.trim_end_matches("\r\n").split("\r\n").enumerate() {
        if i > 0 && l.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        out.push_str(l);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}

async fn handle(
    mut client: TcpStream,
    upstream: u16,
    rules: Arc<Mutex<Vec<Rule>>>,
    log: Arc<Mutex<Vec<Seen>>>,
) -> std::io::Result<()> {
    let Some((head, mut body_start)) = read_head(&mut client).await? else {
        return Ok(());
    };
    let head = String::from_utf8_lossy(&head).to_string();
    let mut first = head.split(' ');
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    log.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
        range: header(&head, "range").map(str::to_string),
    });
    let fault = {
        let mut rules = rules.lock().unwrap();
        rules
            .iter_mut()
            .find(|r| r.times > 0 && r.method == method && path.contains(&r.path_contains))
            .map(|r| {
                r.times -= 1;
                r.fault.clone()
            })
    };
    let content_length: usize = header(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if let Some(Fault::Status(code, retry)) = &fault {
        // Read the request body first so the client sees the answer, not a reset.
        let mut left = content_length.saturating_sub(body_start.len());
        let mut tmp = vec![0u8; 64 << 10];
        while left > 0 {
            let n = client.read(&mut tmp).await?;
            if n == 0 {
                break;
            }
            left = left.saturating_sub(n);
        }
        let mut resp = format!("HTTP/1.1 {code} Injected\r\nContent-Length: 0\r\n");
        if let Some(s) = retry {
            resp.push_str(&format!("Retry-After: {s}\r\n"));
        }
        resp.push_str("Connection: close\r\n\r\n");
        client.write_all(resp.as_bytes()).await?;
        return client.shutdown().await;
    }
    let mut up = TcpStream::connect(("127.0.0.1", upstream)).await?;
    up.write_all(closing(&head).as_bytes()).await?;
    let cut_request = match &fault {
        Some(Fault::CutRequestAfter(n)) => Some(*n),
        _ => None,
    };
    // Request body upstream.
    let mut sent = 0usize;
    let mut tmp = vec![0u8; 64 << 10];
    loop {
        if !body_start.is_empty() {
            let mut chunk = std::mem::take(&mut body_start);
            if let Some(limit) = cut_request {
                if sent + chunk.len() >= limit {
                    chunk.truncate(limit - sent);
                    up.write_all(&chunk).await?;
                    return Ok(()); // both sockets drop: the upload is cut
                }
            }
            up.write_all(&chunk).await?;
            sent += chunk.len();
        }
        if sent >= content_length {
            break;
        }
        let n = client.read(&mut tmp).await?;
        if n == 0 {
            return Ok(());
        }
        body_start = tmp[..n].to_vec();
    }
    // Response back, with the fault.
    let Some((rhead, mut rest)) = read_head(&mut up).await? else {
        return Ok(());
    };
    let rhead = String::from_utf8_lossy(&rhead).to_string();
    client.write_all(closing(&rhead).as_bytes()).await?;
    let mut done = 0usize;
    loop {
        if !rest.is_empty() {
            let mut chunk = std::mem::take(&mut rest);
            match &fault {
                Some(Fault::CutResponseAfter(n)) if done + chunk.len() >= *n => {
                    chunk.truncate(n - done);
                    client.write_all(&chunk).await?;
                    client.flush().await?;
                    return Ok(()); // dropped mid-body
                }
                Some(Fault::Corrupt(at)) if (done..done + chunk.len()).contains(at) => {
                    chunk[at - done] ^= 0xff;
                }
                _ => {}
            }
            client.write_all(&chunk).await?;
            done += chunk.len();
        }
        let n = up.read(&mut tmp).await?;
        if n == 0 {
            break;
        }
        rest = tmp[..n].to_vec();
    }
    client.shutdown().await
}
