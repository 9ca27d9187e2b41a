//! Component actions: a declarative REST call with the connection's auth, or custom code in the
//! component's container.

use serde_json::{Map, Value, json};
use weft_plan::AuthKind;

use super::http::send;
use super::{ActionCall, StepEnv, StepError};

pub(super) async fn run(
    env: &StepEnv<'_>,
    call: &ActionCall,
    input: &Value,
) -> Result<Value, StepError> {
    let component =
        env.plan.components.get(&call.component).ok_or_else(|| {
            StepError::permanent(format!("unknown component `{}`", call.component))
        })?;
    let fields = env
        .connection
        .as_ref()
        .map(|(_, f)| f.clone())
        .unwrap_or_default();
    let auth_kind = env
        .connection
        .as_ref()
        .map(|(c, _)| c.auth)
        .unwrap_or(AuthKind::None);
    let field = |k: &str| super::connection_field(&fields, k);
    let (token, username, password, key) = (
        field("token"),
        field("username"),
        field("password"),
        field("key"),
    );
    let key_header = fields
        .get("header")
        .and_then(Value::as_str)
        .unwrap_or("X-API-Key")
        .to_string();
    let apply_auth = move |req: reqwest::RequestBuilder| -> reqwest::RequestBuilder {
        match auth_kind {
            AuthKind::Bearer => req.bearer_auth(&token),
            AuthKind::Basic => req.basic_auth(&username, Some(&password)),
            AuthKind::ApiKey => req.header(key_header.as_str(), &key),
            AuthKind::None => req,
        }
    };
    match &call.http {
        Some(http) => {
            let base = env
                .connection
                .as_ref()
                .and_then(|(_, f)| f.get("base_url").and_then(Value::as_str).map(str::to_string))
                .or_else(|| component.base_url.clone())
                .ok_or_else(|| StepError::permanent(format!("component `{}` has no base URL: set `base_url` on the component or the connection", call.component)))?;
            let url = format!("{}{}", base.trim_end_matches('/'), http.path);
            let response = send(
                env,
                http.method.as_str(),
                &url,
                &http.query,
                &http.headers,
                http.body.as_ref(),
                "Idempotency-Key",
                env.timeout,
                Some(&apply_auth),
            )
            .await?;
            // A component action's output is the API's answer (parsed JSON, or text).
            Ok(response.get("body").cloned().unwrap_or(Value::Null))
        }
        None => {
            // Custom code: the component's container answers POST /actions/<action>.
            // Where it listens: `--component-url NAME=URL` (or WEFT_COMPONENT_URL_<NAME>),
            // else the compose service of the same name.
            let base = env
                .component_urls
                .get(&call.component)
                .cloned()
                .unwrap_or_else(|| format!("http://{}:8080", call.component));
            let url = format!("{}/actions/{}", base.trim_end_matches('/'), call.action);
            let body = json!({ "input": input, "connection": Value::Object(fields.clone()) });
            let out = send(
                env,
                "POST",
                &url,
                &Map::new(),
                &Map::new(),
                Some(&body),
                "Idempotency-Key",
                env.timeout,
                None,
            )
            .await?;
            Ok(out["body"].get("output").cloned().unwrap_or(Value::Null))
        }
    }
}
