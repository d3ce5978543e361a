//! The `kafka-direct` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use kafka_direct::api::types::{KafkaOffset, KafkaPartition, Offsets, PartitionOffset};
use kafka_direct::cli::client::ApiClient;
use kafka_direct::cli::text;
use kafka_direct::config::{describe_keys, RawConfig};
use kafka_direct::format::registry::SchemaRegistry;
use kafka_direct::format::schema::Type;
use kafka_direct::wal::{SyncPolicy, Wal, WalOptions};

#[derive(Parser, Debug)]
#[command(
    name = "kafka-direct",
    version,
    about = "Replicates Kafka topics from an external cluster into an internal one, exactly once per source offset"
)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the service until SIGINT/SIGTERM.
    Run {
        /// Config file (TOML, or JSON if it ends in .json).
        #[arg(long, short)]
        config: PathBuf,
        /// Override a key: --set connector.auto.offset.reset=latest (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Validate a config file and print the effective settings.
    Validate {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Overrides, as for `run`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Diagnose a config before running it: keys, connectivity (and the addresses the
    /// brokers advertise), topics, a sample of values against the format, internal topics.
    /// Exit 0 when everything needed to run passes.
    Check {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Overrides, as for `run`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Print JSON: {passed, findings: [{step, status, finding, fix}]}.
        #[arg(long)]
        json: bool,
    },
    /// List every configuration key with its default.
    Keys,
    /// List the schema registry of a stopped service (format=json, schemas.enable=true).
    Schemas {
        /// Config file (its data.dir and connector name are used).
        #[arg(long, short)]
        config: PathBuf,
        /// Only this subject (an internal topic name), every version in full.
        #[arg(long)]
        subject: Option<String>,
        /// The connector [default: the one the config file declares].
        #[arg(long)]
        connector: Option<String>,
        /// Print JSON: one object per version, {subject, version, schema}.
        #[arg(long)]
        json: bool,
    },
    /// Status of a running service's connectors and partitions (through its API).
    Status {
        #[command(flatten)]
        api: ApiArgs,
        /// Print the API's JSON (`GET /connectors?expand=status`).
        #[arg(long)]
        json: bool,
    },
    /// List, pause or resume the connectors of a running service (through its API).
    Connectors {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: ConnectorsCommand,
    },
    /// Offsets of a running service's connector (through its API).
    Offsets {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: OffsetsCommand,
    },
    /// Inspect the WAL of a stopped service.
    Wal {
        #[command(subcommand)]
        command: WalCommand,
    },
}

/// Where the API of a running service is. Its token, if it needs one, comes from
/// `KAFKA_DIRECT_API_TOKEN` or from the config file's `api.token`.
#[derive(clap::Args, Debug)]
struct ApiArgs {
    /// host:port or URL of the API [default: api.listen of --config, else 127.0.0.1:8083].
    #[arg(long, global = true)]
    api: Option<String>,
    /// The service's config file: its api.listen and api.token are used.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum ConnectorsCommand {
    /// Names of the connectors.
    List,
    /// Pause a connector: no fetch and no produce starts until it is resumed (kept across restarts).
    Pause {
        /// Connector name.
        name: String,
    },
    /// Resume a paused connector, or start a stopped one.
    Resume {
        /// Connector name.
        name: String,
    },
    /// Stop a connector's tasks (kept across restarts); its offsets can then be changed.
    Stop {
        /// Connector name.
        name: String,
    },
    /// Restart a connector's tasks.
    Restart {
        /// Connector name.
        name: String,
    },
    /// Create a connector (or change its config) from a JSON or TOML file of connector keys.
    Put {
        /// Connector name.
        name: String,
        /// File of connector keys: {"kafka.bootstrap.servers": ..., "topic.prefix": ..., ...}.
        #[arg(long)]
        file: PathBuf,
    },
    /// Delete a connector created through the API, with its WAL entries, offsets and schemas.
    Delete {
        /// Connector name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum OffsetsCommand {
    /// Next source offset to forward, per partition.
    Get {
        /// Connector name.
        name: String,
        /// Print the API's JSON (KIP-875 shape).
        #[arg(long)]
        json: bool,
    },
    /// Move partitions of a stopped connector: TOPIC/PARTITION=OFFSET, repeatable.
    Set {
        /// Connector name.
        name: String,
        /// e.g. orders/0=1200 orders/1=980
        #[arg(required = true, value_name = "TOPIC/PARTITION=OFFSET")]
        positions: Vec<String>,
    },
    /// Send every partition of a stopped connector back to auto.offset.reset.
    Reset {
        /// Connector name.
        name: String,
    },
    /// The internal offset holding the copy of a source offset (or of the next one
    /// that has a copy): where a consumer failing over resumes.
    Translate {
        /// Connector name.
        name: String,
        /// e.g. orders/0=1200
        #[arg(value_name = "TOPIC/PARTITION=OFFSET")]
        position: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum WalCommand {
    /// Per partition: entries, records, bytes, fetched_next, forwarded_next.
    Stats {
        /// The service's data.dir.
        #[arg(long)]
        data_dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Decode every entry and report damaged ones (exit 1 if any).
    Check {
        /// The service's data.dir.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

/// `println!` that ends the process quietly when stdout is closed (`kafka-direct keys | head`)
/// instead of panicking on the broken pipe.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = writeln!(stdout, $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("error: cannot write to stdout: {e}");
            std::process::exit(1);
        }
    }};
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            let message = error_chain(&e);
            tracing::error!("{message}");
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, leaving out a cause whose text the message already holds.
fn error_chain(e: &anyhow::Error) -> String {
    let mut message = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    message
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load(
    config: &std::path::Path,
    overrides: &[String],
) -> Result<kafka_direct::config::ServiceConfig, kafka_direct::config::ConfigError> {
    let mut raw = RawConfig::from_file(config)?;
    raw.apply_overrides(overrides)?;
    kafka_direct::service::configure(&raw)
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config, overrides } => run_command(&config, &overrides),
        Command::Validate { config, overrides } => match load(&config, &overrides) {
            Ok(c) => {
                out!("{c:#?}");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("config error: {e}");
                Ok(ExitCode::from(2))
            }
        },
        Command::Check {
            config,
            overrides,
            json,
        } => check_command(&config, &overrides, json),
        Command::Status { api, json } => status_command(&api, json),
        Command::Connectors { api, command } => connectors_command(&api, command),
        Command::Offsets { api, command } => offsets_command(&api, command),
        Command::Keys => keys_command(),
        Command::Wal { command } => wal_command(command),
        Command::Schemas {
            config,
            subject,
            connector,
            json,
        } => schemas_command(&config, subject, connector, json),
    }
}

/// `run`: the service until SIGINT/SIGTERM.
fn run_command(config: &std::path::Path, overrides: &[String]) -> anyhow::Result<ExitCode> {
    let config = match load(config, overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("config error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(kafka_direct::service::run(config, shutdown_signal()));
    // A WAL flush stuck on failed storage must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    result?;
    Ok(ExitCode::SUCCESS)
}

/// `check`: the diagnosis, as text or JSON.
fn check_command(
    config: &std::path::Path,
    overrides: &[String],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let report = match load(config, overrides) {
        Ok(c) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(kafka_direct::check::run(&c))
        }
        Err(e) => kafka_direct::check::Report::bad_config(e.to_string()),
    };
    if json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let text = report.to_text();
        out!("{}", text.trim_end());
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `status`: every connector and its partitions, through the API.
fn status_command(api: &ApiArgs, json: bool) -> anyhow::Result<ExitCode> {
    let client = api_client(api)?;
    let status = client.get_json("/connectors?expand=status")?;
    if json {
        out!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        let connectors =
            text::expanded(status).context("the API's status answer does not read as a status")?;
        out!("{}", text::status_table(&connectors).trim_end());
    }
    Ok(ExitCode::SUCCESS)
}

/// `connectors …`: list, pause, resume, stop, restart, put, delete, through the API.
fn connectors_command(api: &ApiArgs, command: ConnectorsCommand) -> anyhow::Result<ExitCode> {
    let client = api_client(api)?;
    match command {
        ConnectorsCommand::List => {
            let names = client.get_json("/connectors")?;
            for name in names.as_array().into_iter().flatten() {
                out!("{}", name.as_str().unwrap_or_default());
            }
        }
        ConnectorsCommand::Pause { name } => {
            put_action(&client, &name, "pause")?;
            out!("connector {name}: pause requested");
        }
        ConnectorsCommand::Resume { name } => {
            put_action(&client, &name, "resume")?;
            out!("connector {name}: resume requested");
        }
        ConnectorsCommand::Stop { name } => {
            put_action(&client, &name, "stop")?;
            out!("connector {name}: stopped");
        }
        ConnectorsCommand::Restart { name } => {
            client.send_ok("POST", &format!("/connectors/{name}/restart"), None)?;
            out!("connector {name}: restarted");
        }
        ConnectorsCommand::Put { name, file } => {
            let raw = RawConfig::from_file(&file)?;
            let settings: serde_json::Map<String, serde_json::Value> = raw
                .entries()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            let body = serde_json::Value::Object(settings);
            let (status, _) =
                client.send_ok("PUT", &format!("/connectors/{name}/config"), Some(&body))?;
            out!(
                "connector {name}: {}",
                if status == 201 {
                    "created"
                } else {
                    "config changed"
                }
            );
        }
        ConnectorsCommand::Delete { name } => {
            client.send_ok("DELETE", &format!("/connectors/{name}"), None)?;
            out!("connector {name}: deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `TOPIC/PARTITION=OFFSET`.
fn parse_position(position: &str) -> Option<(&str, i32, i64)> {
    let (tp, offset) = position.rsplit_once('=')?;
    let (topic, partition) = tp.rsplit_once('/')?;
    Some((topic, partition.parse().ok()?, offset.parse().ok()?))
}

/// `offsets …`: get, set, reset, translate, through the API.
fn offsets_command(api: &ApiArgs, command: OffsetsCommand) -> anyhow::Result<ExitCode> {
    let client = api_client(api)?;
    match command {
        OffsetsCommand::Set { name, positions } => {
            let mut offsets = Vec::new();
            for position in &positions {
                let Some((topic, partition, offset)) = parse_position(position) else {
                    anyhow::bail!(
                        "{position:?} is not TOPIC/PARTITION=OFFSET (e.g. orders/0=1200)"
                    );
                };
                offsets.push(PartitionOffset {
                    partition: KafkaPartition {
                        kafka_topic: topic.to_owned(),
                        kafka_partition: partition,
                    },
                    offset: KafkaOffset {
                        kafka_offset: offset,
                    },
                });
            }
            let body = serde_json::to_value(Offsets { offsets })?;
            client.send_ok("PATCH", &format!("/connectors/{name}/offsets"), Some(&body))?;
            out!("connector {name}: offsets set; resume it to copy from there");
        }
        OffsetsCommand::Translate {
            name,
            position,
            json,
        } => {
            let Some((topic, partition, offset)) = parse_position(&position) else {
                anyhow::bail!("{position:?} is not TOPIC/PARTITION=OFFSET (e.g. orders/0=1200)");
            };
            let answer = client.get_json(&format!(
                "/connectors/{name}/offsets/translate?topic={topic}&partition={partition}&offset={offset}"
            ))?;
            if json {
                out!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                let at = answer["internal_offset"]
                    .as_i64()
                    .map(|o| {
                        format!(
                            "{}/{partition}@{o}",
                            answer["internal_topic"].as_str().unwrap_or_default()
                        )
                    })
                    .unwrap_or_else(|| "-".into());
                out!(
                    "{topic}/{partition}@{offset} -> {at} ({})\n{}",
                    answer["basis"].as_str().unwrap_or_default(),
                    answer["detail"].as_str().unwrap_or_default()
                );
            }
        }
        OffsetsCommand::Reset { name } => {
            client.send_ok("DELETE", &format!("/connectors/{name}/offsets"), None)?;
            out!("connector {name}: offsets reset to auto.offset.reset; resume it to start again");
        }
        OffsetsCommand::Get { name, json } => {
            let offsets = client.get_json(&format!("/connectors/{name}/offsets"))?;
            if json {
                out!("{}", serde_json::to_string_pretty(&offsets)?);
            } else {
                let offsets = serde_json::from_value(offsets)
                    .context("the API's offsets answer does not read as offsets")?;
                out!("{}", text::offsets_table(&offsets).trim_end());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `keys`: every configuration key with its default.
fn keys_command() -> anyhow::Result<ExitCode> {
    for (key, default, doc) in describe_keys() {
        match default {
            Some(d) => out!("{key:<45} default {d:?}: {doc}"),
            None => out!("{key:<45} required: {doc}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `schemas`: the schema registry of a stopped service.
fn schemas_command(
    config: &std::path::Path,
    subject: Option<String>,
    connector: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let config = match load(config, &[]) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("config error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let connector = match &connector {
        Some(name) => name.clone(),
        None => config.file_connector()?.name.clone(),
    };
    let wal = open_wal(&config.data_dir)?;
    let registry = SchemaRegistry::open(&wal, &connector)?;
    let mut all = registry.all();
    if let Some(subject) = &subject {
        all.retain(|s, _| s == subject);
        anyhow::ensure!(
            !all.is_empty(),
            "connector {connector} has no schema for subject {subject} (subjects are internal topic names)"
        );
    }
    let versions = all.values().flatten();
    if json {
        let list: Vec<serde_json::Value> = versions
            .map(|v| {
                serde_json::json!({
                    "subject": v.subject,
                    "version": v.version,
                    "schema": serde_json::from_str::<serde_json::Value>(&v.connect)
                        .expect("stored schemas are JSON"),
                })
            })
            .collect();
        out!("{}", serde_json::to_string_pretty(&list)?);
    } else if subject.is_some() {
        for v in versions {
            let schema: serde_json::Value = serde_json::from_str(&v.connect)?;
            out!(
                "{} version {}:\n{}",
                v.subject,
                v.version,
                serde_json::to_string_pretty(&schema)?
            );
        }
    } else if all.is_empty() {
        out!("no schemas stored for connector {connector} (they are made with connector.format=json and connector.schemas.enable=true)");
    } else {
        out!(
            "{:<40} {:>8} fields (latest version)",
            "subject",
            "versions"
        );
        for (subject, list) in &all {
            let latest = list.last().expect("a subject has a version");
            let fields = match &latest.schema.ty {
                Type::Struct { fields } => fields
                    .iter()
                    .map(|f| {
                        let opt = if f.schema.optional { "?" } else { "" };
                        format!("{}{opt}:{}", f.name, f.schema.ty.name())
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                other => other.name().to_owned(),
            };
            out!("{subject:<40} {:>8} {fields}", list.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The client of the API `args` point at.
fn api_client(args: &ApiArgs) -> anyhow::Result<ApiClient> {
    let mut token = std::env::var("KAFKA_DIRECT_API_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let mut address = args.api.clone();
    if let Some(path) = &args.config {
        let config = load(path, &[]).with_context(|| format!("reading {}", path.display()))?;
        if token.is_none() {
            token = config.api_token.map(|t| t.expose().to_owned());
        }
        if address.is_none() {
            let listen = config.api_listen.with_context(|| {
                format!(
                    "{} sets api.listen=none: the service runs without an API",
                    path.display()
                )
            })?;
            let (host, port) = listen.rsplit_once(':').expect("api.listen was validated");
            anyhow::ensure!(
                port != "0",
                "{} sets api.listen to port 0 (any free port): pass the port the service logged (\"API listening\") with --api",
                path.display()
            );
            // A service listening on every interface is reached on loopback.
            let host = match host {
                "0.0.0.0" => "127.0.0.1",
                "[::]" => "[::1]",
                other => other,
            };
            address = Some(format!("{host}:{port}"));
        }
    }
    let address = address.unwrap_or_else(|| "127.0.0.1:8083".to_owned());
    Ok(ApiClient::new(&address, token))
}

/// `PUT /connectors/{name}/{action}`, expecting success.
fn put_action(client: &ApiClient, name: &str, action: &str) -> anyhow::Result<()> {
    client.send_ok("PUT", &format!("/connectors/{name}/{action}"), None)?;
    Ok(())
}

fn open_wal(data_dir: &std::path::Path) -> anyhow::Result<Wal> {
    anyhow::ensure!(
        data_dir.join("db").exists(),
        "{} holds no kafka-direct WAL",
        data_dir.display()
    );
    Ok(kafka_direct::state::open(
        data_dir,
        WalOptions {
            sync: SyncPolicy::Flush,
            max_bytes: u64::MAX,
            cache_bytes: 16 << 20,
        },
    )?)
}

fn wal_command(command: WalCommand) -> anyhow::Result<ExitCode> {
    match command {
        WalCommand::Stats { data_dir, json } => {
            let stats = open_wal(&data_dir)?.stats()?;
            if json {
                out!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                let show = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
                out!(
                    "{:<20} {:<30} {:>9} {:>8} {:>10} {:>12} {:>14} {:>14} {:>8}",
                    "connector",
                    "partition",
                    "entries",
                    "records",
                    "bytes",
                    "fetched_next",
                    "forwarded_next",
                    "damaged",
                    ""
                );
                for s in stats {
                    out!(
                        "{:<20} {:<30} {:>9} {:>8} {:>10} {:>12} {:>14} {:>14}",
                        s.connector,
                        format!("{}/{}", s.topic, s.partition),
                        s.entries,
                        s.records,
                        s.bytes,
                        show(s.fetched_next),
                        show(s.forwarded_next),
                        s.damaged_entries
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        WalCommand::Check { data_dir } => {
            let wal = open_wal(&data_dir)?;
            let mut damaged = 0;
            for (connector, partition) in wal.partitions() {
                let log = wal.partition(&connector, &partition)?;
                log.checkpoints()?;
                for (offset, reason) in log.check()? {
                    damaged += 1;
                    out!("DAMAGED {connector} {partition} entry at offset {offset}: {reason}");
                }
            }
            if damaged == 0 {
                out!("ok: every WAL entry decodes and matches its checksum");
                Ok(ExitCode::SUCCESS)
            } else {
                out!("{damaged} damaged entries; see docs/operations.md (rebuild from the last forwarded checkpoint)");
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the service");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
