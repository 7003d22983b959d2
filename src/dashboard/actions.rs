//! The operator's actions: cancel, signal, retry a failing workflow task
//! now, remove a finished instance.
//!
//! Each is a `POST` form that must carry a ticked `confirm` box, is refused
//! in read-only mode (403) and when posted from another site (an `Origin`
//! naming another host: a page elsewhere cannot act with the operator's
//! cookie), and is logged at info with the action and the instance id,
//! never a payload. After it, the browser is sent back to a page (303).

use std::fmt::Write as _;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::html::{escape, url_encode};
use super::{queries, Authorized, Dashboard, DashboardError};
use crate::{CancelOutcome, InstanceSnapshot, InstanceState};

/// The fields every action form posts; `signal` also uses the others.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ActionForm {
    /// `yes` when the confirmation box is ticked (absent otherwise).
    #[serde(default)]
    confirm: String,
    /// The signal's name.
    #[serde(default)]
    name: String,
    /// The signal's payload, as JSON text.
    #[serde(default)]
    payload: String,
}

/// Refuses an action that must not run: read-only mode, another site's
/// form, an unticked confirmation box.
fn check(
    request: &HttpRequest,
    dashboard: &Dashboard,
    form: &ActionForm,
) -> Result<(), DashboardError> {
    if dashboard.options.read_only {
        return Err(DashboardError::Forbidden(
            "this dashboard is read-only: actions are turned off",
        ));
    }
    if let Some(origin) = request.headers().get(header::ORIGIN) {
        let origin_host = origin
            .to_str()
            .ok()
            .and_then(|origin| origin.split_once("://"))
            .map(|(_, host)| host.trim_end_matches('/'));
        let own_host = request
            .headers()
            .get(header::HOST)
            .and_then(|host| host.to_str().ok());
        if origin_host.is_none() || origin_host != own_host {
            return Err(DashboardError::Forbidden(
                "refused: the form was posted from another site",
            ));
        }
    }
    if form.confirm != "yes" {
        return Err(DashboardError::BadRequest(
            "tick the confirmation box to confirm the action".to_string(),
        ));
    }
    Ok(())
}

/// 303 to the instance's page, saying which action succeeded.
fn back_to(dashboard: &Dashboard, instance_id: &str, done: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((
            header::LOCATION,
            format!(
                "{}/instances/{}?done={done}",
                dashboard.base,
                url_encode(instance_id)
            ),
        ))
        .finish()
}

/// `POST /instances/{id}/cancel`: asks the active execution to cancel.
pub(crate) async fn cancel(
    _auth: Authorized,
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
    instance_id: web::Path<String>,
    form: web::Form<ActionForm>,
) -> Result<HttpResponse, DashboardError> {
    check(&request, &dashboard, &form)?;
    let instance_id = instance_id.into_inner();
    let outcome = dashboard.store.cancel_instance(&instance_id).await?;
    tracing::info!(action = "cancel", %instance_id, ?outcome, "dashboard action");
    let done = match outcome {
        CancelOutcome::AlreadyFinished => "cancel-finished",
        _ => "cancel",
    };
    Ok(back_to(&dashboard, &instance_id, done))
}

/// `POST /instances/{id}/signal`: sends a signal with a JSON payload.
pub(crate) async fn signal(
    _auth: Authorized,
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
    instance_id: web::Path<String>,
    form: web::Form<ActionForm>,
) -> Result<HttpResponse, DashboardError> {
    check(&request, &dashboard, &form)?;
    let instance_id = instance_id.into_inner();
    let name = form.name.trim();
    if name.is_empty() {
        return Err(DashboardError::BadRequest(
            "name the signal the workflow waits for".to_string(),
        ));
    }
    let payload = if form.payload.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&form.payload)
            .map_err(|err| DashboardError::BadRequest(format!("the payload is not JSON: {err}")))?
    };
    dashboard
        .store
        .signal_instance(&instance_id, name, payload)
        .await?;
    // The signal's name is the operator's and says what was done; its
    // payload may hold anything and stays out of the log.
    tracing::info!(action = "signal", %instance_id, signal = name, "dashboard action");
    Ok(back_to(&dashboard, &instance_id, "signal"))
}

/// `POST /instances/{id}/retry`: makes a failing workflow task claimable now.
pub(crate) async fn retry(
    _auth: Authorized,
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
    instance_id: web::Path<String>,
    form: web::Form<ActionForm>,
) -> Result<HttpResponse, DashboardError> {
    check(&request, &dashboard, &form)?;
    let instance_id = instance_id.into_inner();
    if !queries::retry_now(&dashboard.store, &instance_id).await? {
        return Err(DashboardError::BadRequest(format!(
            "instance {instance_id:?} has no failed workflow task waiting for its retry"
        )));
    }
    tracing::info!(action = "retry", %instance_id, "dashboard action");
    Ok(back_to(&dashboard, &instance_id, "retry"))
}

/// `POST /instances/{id}/remove`: removes a finished instance for good.
pub(crate) async fn remove(
    _auth: Authorized,
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
    instance_id: web::Path<String>,
    form: web::Form<ActionForm>,
) -> Result<HttpResponse, DashboardError> {
    check(&request, &dashboard, &form)?;
    let instance_id = instance_id.into_inner();
    dashboard.store.remove_instance(&instance_id).await?;
    tracing::info!(action = "remove", %instance_id, "dashboard action");
    Ok(HttpResponse::SeeOther()
        .insert_header((
            header::LOCATION,
            format!("{}/instances?done=removed", dashboard.base),
        ))
        .finish())
}

/// The action forms an instance's page shows, for what its state allows.
pub(crate) fn forms(body: &mut String, base: &str, snapshot: &InstanceSnapshot) {
    let action = |name: &str| {
        format!(
            "{base}/instances/{}/{name}",
            url_encode(&snapshot.instance.instance_id)
        )
    };
    let confirm = "<label><input type=\"checkbox\" name=\"confirm\" value=\"yes\" required> \
                   confirm</label>";
    body.push_str("<h2>Actions</h2>");
    if snapshot.state == InstanceState::Active {
        let _ = write!(
            body,
            "<form class=\"action\" method=\"post\" action=\"{}\"><strong>Cancel</strong> \
             the execution (its workflow decides how to wind down). {confirm} \
             <button type=\"submit\">Cancel</button></form>",
            action("cancel")
        );
        let _ = write!(
            body,
            "<form class=\"action\" method=\"post\" action=\"{}\"><strong>Signal</strong> \
             <label>name <input name=\"name\" required></label><br>\
             <label>payload (JSON)<textarea name=\"payload\" rows=\"3\">null</textarea></label>\
             {confirm} <button type=\"submit\">Send</button></form>",
            action("signal")
        );
        if snapshot.task_attempts > 0 {
            let _ = write!(
                body,
                "<form class=\"action\" method=\"post\" action=\"{}\"><strong>Retry now</strong> \
                 the failing workflow task instead of waiting for its backoff. {confirm} \
                 <button type=\"submit\">Retry</button></form>",
                action("retry")
            );
        }
    } else {
        let _ = write!(
            body,
            "<form class=\"action\" method=\"post\" action=\"{}\"><strong>Remove</strong> \
             every finished execution of {} with its history, for good. {confirm} \
             <button type=\"submit\">Remove</button></form>",
            action("remove"),
            escape(&snapshot.instance.instance_id)
        );
    }
}
