//! Local stand-ins for the services the emulator lacks, each a process of
//! its own speaking the service's real protocol: Lambda's Invoke API
//! running a Python handler (`scripts/lambda_standin.py`) and Bedrock
//! Runtime's InvokeModel (`scripts/bedrock_standin.py`). The SDK clients
//! reach them through an endpoint override.

use bulk_import::aws::Clients;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A stand-in server, stopped when dropped.
pub struct StandIn {
    child: Child,
    pub url: String,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

impl StandIn {
    /// Starts `scripts/<script>` with `args` on a free port, under the
    /// project's Python environment (`.venv`, which `make test` creates),
    /// and waits for the line that says where it listens. `STANDIN_LOG=1`
    /// shows its log.
    pub fn start(script: &str, args: &[&str]) -> StandIn {
        let root = root();
        let python = std::env::var("STANDIN_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root.join(".venv/bin/python"));
        let mut child = Command::new(&python)
            .arg(root.join("scripts").join(script))
            .args(["--port", "0"])
            .args(args)
            .current_dir(&root)
            .stdout(Stdio::piped())
            // Its log (and the handler's output) only when asked for.
            .stderr(if std::env::var_os("STANDIN_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap_or_else(|e| panic!("starting {script} with {}: {e}", python.display()));
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the stand-in's first line");
        let url = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("{script} said {line:?}, not `listening URL`"))
            .to_owned();
        StandIn { child, url }
    }

    /// Its counters (`GET /standin/stats`).
    pub async fn stats(&self) -> serde_json::Value {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let address = self.url.trim_start_matches("http://").to_owned();
        let mut stream = tokio::net::TcpStream::connect(&address)
            .await
            .expect("connect to the stand-in");
        let request = format!("GET /standin/stats HTTP/1.0\r\nHost: {address}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("read");
        let text = String::from_utf8(response).expect("UTF-8");
        let (_, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
        serde_json::from_str(body).expect("stats are JSON")
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `clients` whose Lambda client calls `lambda` and Bedrock client calls
/// `bedrock` (either left as it is when `None`).
pub async fn clients_with(
    mut clients: Clients,
    lambda: Option<&StandIn>,
    bedrock: Option<&StandIn>,
) -> Clients {
    let config = bulk_import::aws::load_sdk_config().await;
    if let Some(server) = lambda {
        let conf = aws_sdk_lambda::config::Builder::from(&config)
            .endpoint_url(&server.url)
            .build();
        clients.lambda = aws_sdk_lambda::Client::from_conf(conf);
    }
    if let Some(server) = bedrock {
        let conf = aws_sdk_bedrockruntime::config::Builder::from(&config)
            .endpoint_url(&server.url)
            .build();
        clients.bedrock = aws_sdk_bedrockruntime::Client::from_conf(conf);
    }
    clients
}
