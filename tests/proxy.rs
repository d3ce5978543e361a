//! `proxy.url`: every connection to a cluster goes through a real SOCKS5 proxy
//! (Debian's microsocks). The proof is the kernel's socket table: while the service
//! replicates, every connection to the external broker belongs to the proxy, none to
//! kafka-direct.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

struct Socks5 {
    child: Child,
    port: u16,
}

impl Socks5 {
    fn start() -> Self {
        let bin = run_script("install-microsocks");
        let port = free_port();
        let child = Command::new(bin)
            .args(["-i", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let child = listening(child, port, Duration::from_secs(10)).expect("microsocks listens");
        Self { child, port }
    }
}

impl Drop for Socks5 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The processes owning established connections to `port` (from `ss -tnp`).
fn owners_of_connections_to(port: u16) -> Vec<String> {
    let out = Command::new("ss")
        .args([
            "-tnpH",
            "state",
            "established",
            "dport",
            "=",
            &format!(":{port}"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let users = line.split("users:((\"").nth(1).unwrap_or("?");
            users.split('"').next().unwrap_or("?").to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_connection_to_the_external_cluster_goes_through_the_socks5_proxy() {
    let proxy = Socks5::start();
    let proxy_url = format!("socks5://127.0.0.1:{}", proxy.port);
    let mut p = Pipeline::new("proxied", 2, &[("connector.proxy.url", &proxy_url)]).await;
    p.produce_each(0, 200).await;
    let (ok, text) = p.service.cli("check");
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!(
            "external cluster: connections go through the SOCKS5 proxy 127.0.0.1:{}",
            proxy.port
        )),
        "{text}"
    );
    p.service.start();
    p.assert_replicated(0, Duration::from_secs(90)).await;
    // The service is still running, its fetchers connected.
    let owners = owners_of_connections_to(p.external.port);
    assert!(!owners.is_empty(), "no connection to the external broker");
    assert!(
        owners.iter().all(|o| o == "microsocks"),
        "connections not through the proxy: {owners:?}"
    );
    assert!(p.service.terminate(Duration::from_secs(30)).success());

    // A proxy that is not there is named, with the key to check.
    drop(proxy);
    let (ok, text) = p.service.cli("check");
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!(
            "cannot reach {} through the SOCKS5 proxy 127.0.0.1:",
            p.external.addr()
        )) && text.contains("check proxy.url"),
        "{text}"
    );
}
