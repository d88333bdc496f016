//! `kiln version`: this client's version and, with `--host`, the daemon's.

use anyhow::Result;

pub(crate) async fn run(host: Option<&str>, tls: &kiln_client::TlsFiles) -> Result<i32> {
    outln!("Client:");
    outln!(" Version:      {}", env!("CARGO_PKG_VERSION"));
    outln!(" API version:  {}", kiln_client::API_VERSION);
    let Some(host) = host else {
        return Ok(0);
    };
    let server = kiln_client::Client::connect(host, Some(tls))
        .await?
        .version()
        .await?;
    outln!("Server:");
    outln!(" Address:      {host}");
    outln!(" Version:      {}", server.version);
    outln!(" API version:  {}", server.api_version);
    outln!(" Platform:     {}", server.platform);
    Ok(0)
}
