//! The runtime tests' harness: a recording HTTP sink, the orders repository, and a runtime
//! started in this process on a real store and a real listener on 127.0.0.1.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;
use weft_compiler::repo::Sources;
use weft_runtime::{Options, auth, history};

/// A local HTTP server that records what it receives and answers with programmed statuses.
#[derive(Clone, Default)]
pub struct Sink {
    pub received: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
    /// Statuses to answer with, in order; 200 when empty (or `always` when set).
    pub script: Arc<Mutex<VecDeque<u16>>>,
    pub always: Arc<Mutex<Option<u16>>>,
    /// The body to answer with (default `{"ok":true}`); `{headers}` is replaced by the
    /// request's headers as JSON, as an upstream that echoes its request does.
    pub answer: Arc<Mutex<Option<String>>>,
}

impl Sink {
    pub async fn start() -> (Sink, SocketAddr) {
        let sink = Sink::default();
        async fn handle(
            State(sink): State<Sink>,
            headers: HeaderMap,
            body: Bytes,
        ) -> (StatusCode, String) {
            let status = sink
                .script
                .lock()
                .unwrap()
                .pop_front()
                .or(*sink.always.lock().unwrap())
                .unwrap_or(200);
            let headers_json: serde_json::Map<String, Value> = headers
                .iter()
                .map(|(k, v)| (k.to_string(), Value::from(v.to_str().unwrap_or_default())))
                .collect();
            if status < 300 {
                let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
                sink.received.lock().unwrap().push((headers, v));
            }
            let answer = sink.answer.lock().unwrap().clone();
            let body = match answer {
                Some(a) => a.replace("{headers}", &Value::Object(headers_json).to_string()),
                None => "{\"ok\":true}".into(),
            };
            (StatusCode::from_u16(status).unwrap(), body)
        }
        let app = Router::new()
            .fallback(post(handle))
            .with_state(sink.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (sink, addr)
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    pub async fn wait_for(&self, n: usize) {
        for _ in 0..400 {
            if self.count() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the sink received {} of {n} messages", self.count());
    }
}

pub const SECRET: &str = "canary-hook-secret-7c1d";
pub const TOKEN: &str = "canary-crm-token-93ab";
/// globex's token, for the tests with several customers.
pub const GLOBEX_TOKEN: &str = "canary-globex-token-51e0";

pub fn repo(sink: SocketAddr, extra_flows: &str) -> Sources {
    let mut s = Sources::default();
    s.add("weft.yaml", "weft: 1\n");
    s.add(
        "integrations/orders/integration.yaml",
        format!(
            r#"weft: 1
name: orders
config:
  sink_url: {{ type: url, default: "http://{sink}" }}
  hook_secret: {{ type: secret }}
  token: {{ type: secret }}
  min_amount: {{ type: integer, default: 10 }}
flows:
  order-created:
    trigger:
      webhook:
        path: /orders
        auth: {{ hmac_sha256: {{ secret: "{{{{ config.hook_secret }}}}", header: X-Signature }} }}
    steps:
      - id: contact
        uses: transform
        with:
          value: {{ id: "{{{{ trigger.body.id }}}}", amount: "{{{{ trigger.body.amount_cents / 100 }}}}" }}
      - id: big-enough
        uses: branch
        with:
          cases:
            - when: "{{{{ steps.contact.amount >= config.min_amount }}}}"
              steps:
                - id: push
                  uses: http.post
                  with:
                    url: "{{{{ config.sink_url }}}}/customers"
                    headers: {{ Authorization: "Bearer {{{{ config.token }}}}" }}
                    body: "{{{{ steps.contact }}}}"
                  retry: {{ attempts: 3, initial: 50ms, max: 200ms }}
                  on_error: dead_letter
          default:
            - {{ id: skip, uses: log, with: {{ message: "skipped {{{{ trigger.body.id }}}}" }} }}
{extra_flows}"#
        ),
    );
    s.add(
        "instances/acme/orders.yaml",
        "weft: 1\nintegration: orders\nconfig:\n  hook_secret: { secret: HOOK_SECRET }\n  token: { secret: CRM_TOKEN }\n",
    );
    s.sort();
    s
}

/// The secrets of the orders repository, by environment variable.
pub fn secrets() -> HashMap<String, String> {
    [
        ("HOOK_SECRET", SECRET),
        ("CRM_TOKEN", TOKEN),
        ("CRM_TOKEN_GLOBEX", GLOBEX_TOKEN),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The plans of `sources`, which must compile without errors.
pub fn compile(sources: &Sources) -> Vec<weft_plan::Plan> {
    let compilation = weft_compiler::compile(sources);
    let rendered: Vec<String> = compilation
        .diagnostics
        .iter()
        .map(|d| weft_compiler::diagnostic::render_human(d, &sources.files, false))
        .collect();
    assert_eq!(compilation.error_count(), 0, "{}", rendered.join("\n"));
    compilation.plans
}

pub struct Running {
    pub url: String,
    pub dir: tempfile::TempDir,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<()>,
    pub client: reqwest::Client,
    /// Reloads the running plans.
    pub reloader: std::sync::Arc<weft_runtime::Reloader>,
}

impl Running {
    pub async fn start(sources: &Sources, dir: Option<tempfile::TempDir>) -> Running {
        Running::start_with(sources, dir, HashMap::new()).await
    }

    pub async fn start_with(
        sources: &Sources,
        dir: Option<tempfile::TempDir>,
        component_urls: HashMap<String, String>,
    ) -> Running {
        Running::start_tuned(sources, dir, |o| o.component_urls = component_urls).await
    }

    /// Starts with the test defaults, then `tune` (limits, timeouts) applied.
    pub async fn start_tuned(
        sources: &Sources,
        dir: Option<tempfile::TempDir>,
        tune: impl FnOnce(&mut Options),
    ) -> Running {
        Running::start_plans(compile(sources), dir, tune).await
    }

    /// Starts on plans given as they are (edited by a test, say).
    pub async fn start_plans(
        plans: Vec<weft_plan::Plan>,
        dir: Option<tempfile::TempDir>,
        tune: impl FnOnce(&mut Options),
    ) -> Running {
        let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut options = Options {
            data_dir: dir.path().to_path_buf(),
            listen: addr,
            public_url: format!("http://{addr}"),
            max_body: 1024 * 1024,
            drain_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        tune(&mut options);
        let runtime = weft_runtime::start(plans, options, secrets())
            .await
            .unwrap();
        let reloader = runtime.reloader();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            weft_runtime::serve_on(runtime, listener, async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Running {
            url: format!("http://{addr}"),
            dir,
            stop: Some(tx),
            task,
            client: reqwest::Client::new(),
            reloader,
        }
    }

    /// The integration version instance `key` runs now.
    pub fn reloader_version(&self, key: &str) -> std::sync::Arc<weft_runtime::instance::VersionRt> {
        self.reloader.engine().instances()[key].version.clone()
    }

    pub async fn stop(mut self) -> tempfile::TempDir {
        let _ = self.stop.take().unwrap().send(());
        let _ = self.task.await;
        self.dir
    }

    pub async fn post_order(&self, body: &Value) -> reqwest::Response {
        self.post_signed("acme", "/orders", body).await
    }

    /// Posts a signed event to `customer`'s orders webhook at `path`.
    pub async fn post_signed(&self, customer: &str, path: &str, body: &Value) -> reqwest::Response {
        let raw = serde_json::to_vec(body).unwrap();
        self.client
            .post(format!("{}/hooks/{customer}/orders{path}", self.url))
            .header("content-type", "application/json")
            .header("X-Signature", auth::sign_hmac(SECRET.as_bytes(), &raw))
            .body(raw)
            .send()
            .await
            .unwrap()
    }

    pub fn executions(&self) -> Vec<history::Execution> {
        let conn = history::open(self.dir.path()).unwrap();
        history::executions(&conn, None, None, 1000).unwrap()
    }

    pub async fn wait_finished(&self, n: usize) {
        for _ in 0..400 {
            let done = self
                .executions()
                .iter()
                .filter(|e| e.finished_at.is_some())
                .count();
            if done >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "executions did not finish: {:?}",
            self.executions()
                .iter()
                .map(|e| &e.status)
                .collect::<Vec<_>>()
        );
    }
}
