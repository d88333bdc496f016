//! `kiln version`: this client's version and, with `--host`, the daemon's.

use anyhow::Result;

pub(crate) async fn run(host: Option<&str>, tls: &kiln_client::TlsFiles) -> Result<i32> {
    println!("Client:");
    println!(" Version:      {}", env!("CARGO_PKG_VERSION"));
    println!(" API version:  {}", kiln_client::API_VERSION);
    let Some(host) = host else {
        return Ok(0);
    };
    let server = kiln_client::Client::connect(host, Some(tls))
        .await?
        .version()
        .await?;
    println!("Server:");
    println!(" Address:      {host}");
    println!(" Version:      {}", server.version);
    println!(" API version:  {}", server.api_version);
    println!(" Platform:     {}", server.platform);
    Ok(0)
}
