//! The status page in a real browser: headless Chromium loads /ui from a service with
//! data flowing; the numbers it shows must match the JSON API, and a screenshot is kept in
//! target/ui/ for a person to look at.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use kafka_direct::cli::client::ApiClient;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

/// Chromium's rendering of `url`: (the DOM as it stands after load, a screenshot file).
fn render(url: &str, name: &str) -> (String, std::path::PathBuf) {
    let browser = chromium();
    let out_dir = repo_root().join("target/ui");
    std::fs::create_dir_all(&out_dir).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let flags = |cmd: &mut Command| {
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1200,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()));
    };
    let mut dump = Command::new(&browser);
    flags(&mut dump);
    let dom = dump.arg("--dump-dom").arg(url).output().unwrap();
    assert!(
        dom.status.success(),
        "chromium --dump-dom: {}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let shot = out_dir.join(format!("{name}.png"));
    let _ = std::fs::remove_file(&shot);
    let mut capture = Command::new(&browser);
    flags(&mut capture);
    let png = capture
        .arg(format!("--screenshot={}", shot.display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(
        png.status.success() && shot.exists(),
        "chromium --screenshot: {}",
        String::from_utf8_lossy(&png.stderr)
    );
    (String::from_utf8(dom.stdout).unwrap(), shot)
}

/// The text of the first element after `marker` (e.g. `class="forwarded">`).
fn text_after<'a>(html: &'a str, marker: &str) -> &'a str {
    let at = html
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} not in the page:\n{html}"))
        + marker.len();
    let rest = &html[at..];
    &rest[..rest.find('<').unwrap()]
}

fn row<'a>(html: &'a str, partition: &str) -> &'a str {
    let start = html
        .find(&format!("<tr data-partition=\"{partition}\">"))
        .unwrap_or_else(|| panic!("no row for {partition}:\n{html}"));
    let rest = &html[start..];
    &rest[..rest.find("</tr>").unwrap()]
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_shows_in_chromium_what_the_api_says() {
    let mut p = Pipeline::new(
        "shown",
        2,
        &[
            ("connector.format", "json"),
            ("ui.sample.interval.ms", "300"),
        ],
    )
    .await;
    kcat_produce(
        &p.external.addr(),
        "shown",
        0,
        &[],
        "{\"n\":1}\n{\"n\":2}\nnot json\n",
    );
    kcat_produce(&p.external.addr(), "shown", 1, &[], "{\"n\":3}\n");
    p.service.start();
    let base = p.service.api().await;
    let api = ApiClient::new(&base, None);
    let background = produce_in_background_with(&p, 20, |partition, first, n| {
        (first..first + n)
            .map(|i| rskafka::record::Record {
                key: None,
                value: Some(format!("{{\"partition\":{partition},\"i\":{i}}}").into_bytes()),
                headers: Default::default(),
                timestamp: rskafka::chrono::TimeZone::timestamp_millis_opt(
                    &rskafka::chrono::Utc,
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_millis() as i64,
                )
                .unwrap(),
            })
            .collect()
    });
    background.await.unwrap();
    let mut ends = Vec::new();
    for partition in 0..2 {
        ends.push(end_offset(&p.external.addr(), "shown", partition).await);
    }
    // Every source record forwarded (or dead-lettered): the page then shows settled
    // figures, the same as the API's.
    let deadline = Instant::now() + WAIT;
    let status: Value = loop {
        let client = api.clone();
        let s = tokio::task::spawn_blocking(move || {
            client.get_json("/connectors/test/status").unwrap()
        })
        .await
        .unwrap();
        let done = s["tasks"].as_array().unwrap().iter().all(|t| {
            let end = ends[t["partition"].as_i64().unwrap() as usize];
            t["high_watermark"] == end && t["forwarded_next"] == end
        });
        if done && s["tasks"].as_array().unwrap().len() == 2 {
            break s;
        }
        assert!(Instant::now() < deadline, "not caught up: {s:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (html, shot) = render(&format!("{base}/ui"), "status");
    println!("screenshot: {}", shot.display());
    assert!(html.contains("data-connector=\"test\""), "{html}");
    assert_eq!(
        text_after(&html, "<span class=\"state RUNNING\">"),
        "RUNNING"
    );
    for task in status["tasks"].as_array().unwrap() {
        let name = format!("shown/{}", task["partition"]);
        let row = row(&html, &name);
        for (class, key) in [
            ("high-watermark", "high_watermark"),
            ("fetched-next", "fetched_next"),
            ("forwarded-next", "forwarded_next"),
            ("lag", "lag"),
            ("backlog", "wal_backlog"),
        ] {
            assert_eq!(
                text_after(row, &format!("class=\"{class}\">")),
                task[key].to_string(),
                "{name} {class}: {row}"
            );
        }
        assert_eq!(
            text_after(row, "class=\"dead-letters\""),
            format!(
                " title=\"{}\">{}",
                if task["records_dead_lettered"] == 1 {
                    "MalformedJson: 1"
                } else {
                    ""
                },
                task["records_dead_lettered"]
            ),
            "{row}"
        );
        assert_eq!(text_after(row, "class=\"state RUNNING\">"), "RUNNING");
    }
    let forwarded: i64 = status["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["records_forwarded"].as_i64().unwrap())
        .sum();
    assert_eq!(
        text_after(&html, "class=\"forwarded\">"),
        forwarded.to_string()
    );
    assert_eq!(text_after(&html, "class=\"dead-lettered\">"), "1");
    assert!(
        html.contains("<polyline"),
        "the throughput chart is drawn:\n{html}"
    );
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 5_000,
        "a real screenshot"
    );
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}
