//! The sandbox's HTTP routes, in WeCom's own words: the paths and errcodes as
//! WeCom's documents write them, not the adapter's constants, so that a typo in
//! the adapter cannot hide from the tests that use the sandbox.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Query, Request, State},
    http::{Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};

use super::{
    Fault, Issued, MAX_RECORDED_REQUESTS, RecordedRequest, Sandbox,
    provider::{self, GET_CORP_TOKEN, GET_SUITE_TOKEN},
};

type Params = HashMap<String, String>;

/// 获取access_token.
const GETTOKEN: &str = "/cgi-bin/gettoken";
/// 获取配置的专员与客户群.
const GET_UPGRADE_SERVICE_CONFIG: &str = "/cgi-bin/kf/customer/get_upgrade_service_config";
/// 为客户升级为专员或客户群服务.
const UPGRADE_SERVICE: &str = "/cgi-bin/kf/customer/upgrade_service";
/// 为客户取消推荐.
const CANCEL_UPGRADE_SERVICE: &str = "/cgi-bin/kf/customer/cancel_upgrade_service";

/// Largest request body the sandbox reads; WeCom's bodies are a few hundred bytes.
const MAX_REQUEST_BYTES: usize = 1 << 20;

/// How long an expired token is still recognised as one of ours.
const EXPIRED_TOKENS_KEPT: Duration = Duration::from_secs(3600);

pub(super) fn router(sandbox: Arc<Sandbox>) -> Router {
    let wecom = Router::new()
        .route(GETTOKEN, get(gettoken))
        .route(GET_UPGRADE_SERVICE_CONFIG, get(get_upgrade_config))
        .route(UPGRADE_SERVICE, post(upgrade_service))
        .route(CANCEL_UPGRADE_SERVICE, post(cancel_upgrade))
        .route(GET_SUITE_TOKEN, post(provider::get_suite_token))
        .route(GET_CORP_TOKEN, post(provider::get_corp_token))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&sandbox),
            front_desk,
        ));
    Router::new()
        .route("/sandbox/state", get(state))
        .route("/sandbox/requests", get(requests))
        .route("/sandbox/faults", post(add_fault).delete(clear_faults))
        .route("/sandbox/expire-tokens", post(expire_tokens))
        .route("/sandbox/revoke-tokens", post(revoke_tokens))
        .route("/sandbox/push-ticket", post(provider::push_ticket))
        .route("/sandbox/expire-tickets", post(provider::expire_tickets))
        .merge(wecom)
        .with_state(sandbox)
}

/// WeCom's answer shape: HTTP 200 with errcode and errmsg.
pub(super) fn answer(errcode: i64, errmsg: &str) -> Response {
    Json(json!({ "errcode": errcode, "errmsg": errmsg })).into_response()
}

/// A refusal, as WeCom words it: an errcode and its errmsg.
pub(super) struct Refused(pub(super) i64, pub(super) &'static str);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        answer(self.0, self.1)
    }
}

fn ok(mut fields: Value) -> Response {
    if let Some(map) = fields.as_object_mut() {
        map.insert("errcode".into(), json!(0));
        map.insert("errmsg".into(), json!("ok"));
    }
    Json(fields).into_response()
}

/// What happens to every WeCom request before its route answers: it is recorded,
/// a scripted fault for its path answers instead, and (but for `gettoken`) its
/// access token is checked as WeCom checks it.
async fn front_desk(State(sandbox): State<Arc<Sandbox>>, request: Request, next: Next) -> Response {
    let _answering = InFlight::enter(&sandbox);
    let (parts, body) = request.into_parts();
    let params: Params = Query::try_from_uri(&parts.uri)
        .map(|Query(params)| params)
        .unwrap_or_default();
    let Ok(body) = axum::body::to_bytes(body, MAX_REQUEST_BYTES).await else {
        return Refused(47001, "data format error").into_response();
    };
    let path = parts.uri.path();
    sandbox.record(&parts.method, path, &params, &body);
    if let Some(fault) = sandbox.scripted(path).await {
        return fault;
    }
    // The token calls check their own credentials.
    if ![GETTOKEN, GET_SUITE_TOKEN, GET_CORP_TOKEN].contains(&path)
        && let Err(refused) = sandbox.check_token(&params)
    {
        return refused.into_response();
    }
    next.run(Request::from_parts(parts, Body::from(body))).await
}

/// Counts a WeCom request in [`Sandbox::requests_in_flight`] until its answer is
/// ready, or until the server drops it (the connection closed).
struct InFlight<'a>(&'a Sandbox);

impl<'a> InFlight<'a> {
    fn enter(sandbox: &'a Sandbox) -> Self {
        sandbox.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(sandbox)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

// === impl Sandbox (request handling) ===

impl Sandbox {
    fn record(&self, method: &Method, path: &str, params: &Params, body: &Bytes) {
        let body = if path == GETTOKEN {
            // The secret is not recorded: the sandbox's requests are shown to anyone.
            json!({ "corpid": params.get("corpid") })
        } else if let Some(shown) = provider::shown_body(path, body) {
            shown
        } else if *method == Method::GET {
            Value::Null
        } else {
            serde_json::from_slice(body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
        };
        let mut state = self.state();
        if path == GETTOKEN {
            state.gettoken_calls += 1;
        }
        let corp_id = params
            .get("access_token")
            .and_then(|token| state.tokens.get(token))
            .map(|issued| issued.corp_id.clone());
        if state.requests.len() >= MAX_RECORDED_REQUESTS {
            state.requests.pop_front();
        }
        state.requests.push_back(RecordedRequest {
            method: method.to_string(),
            path: path.to_owned(),
            had_access_token: params.contains_key("access_token"),
            body,
            corp_id,
        });
    }
    /// Applies the first fault scripted for `path`, if any: waits its delay, then
    /// returns its answer, or `None` to let the normal answer through.
    async fn scripted(&self, path: &str) -> Option<Response> {
        let fault = {
            let mut state = self.state();
            let index = state.faults.iter().position(|f| f.path == path)?;
            let fault = state.faults[index].clone();
            if fault.times <= 1 {
                state.faults.remove(index);
            } else {
                state.faults[index].times -= 1;
            }
            fault
        };
        tokio::time::sleep(Duration::from_millis(fault.delay_ms)).await;
        let status = fault
            .http_status
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK);
        if let Some(body) = fault.body {
            let content_type = if body.trim_start().starts_with('{') {
                "application/json"
            } else {
                "text/html; charset=utf-8"
            };
            return Some((status, [(header::CONTENT_TYPE, content_type)], body).into_response());
        }
        if let Some(code) = fault.errcode {
            let errmsg = fault.errmsg.as_deref().unwrap_or("sandbox fault");
            return Some((status, answer(code, errmsg)).into_response());
        }
        fault
            .http_status
            .map(|_| (status, "sandbox fault").into_response())
    }

    /// WeCom's token check: 41001 without one, 40014 if unknown, 42001 if expired.
    fn check_token(&self, params: &Params) -> Result<(), Refused> {
        let Some(token) = params.get("access_token").filter(|t| !t.is_empty()) else {
            return Err(Refused(41001, "access_token missing"));
        };
        match self.state().tokens.get(token) {
            None => Err(Refused(40014, "invalid access_token")),
            Some(issued) if Instant::now() >= issued.expiry => {
                Err(Refused(42001, "access_token expired"))
            }
            Some(_) => Ok(()),
        }
    }

    /// The normal `gettoken` answer.
    fn issue_token(&self, params: &Params) -> Response {
        if params.get("corpid") != Some(&self.config.corp_id) {
            return answer(40013, "invalid corpid");
        }
        if params.get("corpsecret") != Some(&self.config.secret) {
            return answer(40001, "invalid credential");
        }
        let (token, expires_in) = self.access_token_for(&self.config.corp_id);
        ok(json!({ "access_token": token, "expires_in": expires_in }))
    }

    /// An access token of `corp_id` and its seconds left: like WeCom, the valid
    /// one again while there is one.
    pub(super) fn access_token_for(&self, corp_id: &str) -> (String, u64) {
        let now = Instant::now();
        let mut state = self.state();
        // Expired tokens are kept a while, so that using one answers 42001, not 40014.
        state
            .tokens
            .retain(|_, issued| now.saturating_duration_since(issued.expiry) < EXPIRED_TOKENS_KEPT);
        let valid = state
            .tokens
            .iter()
            .filter(|(_, issued)| issued.corp_id == corp_id && issued.expiry > now);
        let (token, expiry) = match valid.max_by_key(|(_, issued)| issued.expiry) {
            Some((token, issued)) => (token.clone(), issued.expiry),
            None => {
                let token = random_token();
                let expiry = now + self.config.token_ttl;
                let issued = Issued {
                    corp_id: corp_id.to_owned(),
                    expiry,
                };
                state.tokens.insert(token.clone(), issued);
                (token, expiry)
            }
        };
        (
            token,
            expiry.saturating_duration_since(now).as_secs().max(1),
        )
    }
}

/// A new token: 64 random letters and digits.
pub(super) fn random_token() -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(64)
        .collect()
}

/// Parses a POST body as WeCom does: 47001 when it is not a JSON object.
pub(super) fn json_body(body: &Bytes) -> Result<Value, Refused> {
    match serde_json::from_slice::<Value>(body) {
        Ok(value) if value.is_object() => Ok(value),
        _ => Err(Refused(47001, "data format error")),
    }
}

/// The (open_kfid, external_userid) of a body, with WeCom's errcodes when missing.
fn customer_of(body: &Value) -> Result<(String, String), Refused> {
    let text = |key| {
        body.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let open_kfid = text("open_kfid").ok_or(Refused(95000, "invalid open_kfid"))?;
    let external_userid =
        text("external_userid").ok_or(Refused(40096, "invalid external_userid"))?;
    Ok((open_kfid.to_owned(), external_userid.to_owned()))
}

// === WeCom routes ===

async fn gettoken(State(sandbox): State<Arc<Sandbox>>, Query(params): Query<Params>) -> Response {
    sandbox.issue_token(&params)
}

async fn get_upgrade_config(State(sandbox): State<Arc<Sandbox>>) -> Response {
    let config = sandbox.config();
    ok(json!({
        "member_range": {
            "userid_list": config.member_userids,
            "department_id_list": config.member_department_ids,
        },
        "groupchat_range": { "chat_id_list": config.group_chat_ids },
    }))
}

async fn upgrade_service(State(sandbox): State<Arc<Sandbox>>, body: Bytes) -> Response {
    let checked = json_body(&body).and_then(|body| {
        let customer = customer_of(&body)?;
        let config = sandbox.config();
        let target = |object: &str, key: &str| {
            body.get(object)
                .and_then(|o| o.get(key))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let configured = match body.get("type").and_then(Value::as_i64) {
            Some(1) => target("member", "userid")
                .map(|userid| config.member_userids.contains(&userid))
                .ok_or(Refused(40058, "member.userid missing"))?,
            Some(2) => target("groupchat", "chat_id")
                .map(|chat_id| config.group_chat_ids.contains(&chat_id))
                .ok_or(Refused(40058, "groupchat.chat_id missing"))?,
            _ => return Err(Refused(40058, "invalid type")),
        };
        if !configured {
            return Err(Refused(
                95021,
                "userid or chat_id not configured in upgrade service",
            ));
        }
        Ok((customer, body))
    });
    match checked {
        Ok((customer, body)) => {
            sandbox.state().recommendations.insert(customer, body);
            ok(json!({}))
        }
        Err(refused) => refused.into_response(),
    }
}

async fn cancel_upgrade(State(sandbox): State<Arc<Sandbox>>, body: Bytes) -> Response {
    match json_body(&body).and_then(|body| customer_of(&body)) {
        Ok(customer) => {
            sandbox.state().recommendations.remove(&customer);
            ok(json!({}))
        }
        Err(refused) => refused.into_response(),
    }
}

// === control routes ===

async fn state(State(sandbox): State<Arc<Sandbox>>) -> Json<Value> {
    let state = sandbox.state();
    let recommendations: Vec<Value> = state.recommendations.values().cloned().collect();
    Json(json!({
        "recommendations": recommendations,
        "gettoken_calls": state.gettoken_calls,
        "pending_faults": state.faults,
        "requests_in_flight": sandbox.requests_in_flight(),
    }))
}

async fn requests(State(sandbox): State<Arc<Sandbox>>) -> Json<Vec<RecordedRequest>> {
    Json(sandbox.requests())
}

async fn add_fault(State(sandbox): State<Arc<Sandbox>>, Json(fault): Json<Fault>) -> StatusCode {
    sandbox.push_fault(fault);
    StatusCode::NO_CONTENT
}

async fn clear_faults(State(sandbox): State<Arc<Sandbox>>) -> StatusCode {
    sandbox.clear_faults();
    StatusCode::NO_CONTENT
}

async fn expire_tokens(State(sandbox): State<Arc<Sandbox>>) -> StatusCode {
    sandbox.expire_tokens();
    StatusCode::NO_CONTENT
}

async fn revoke_tokens(State(sandbox): State<Arc<Sandbox>>) -> StatusCode {
    sandbox.revoke_tokens();
    StatusCode::NO_CONTENT
}
