//! The three pages: the overview, the instances list and one instance.
//!
//! Each handler reads, then builds its HTML from [`html::escape`]d and
//! [`html::url_encode`]d parts only.

use std::fmt::Write as _;
use std::time::SystemTime;

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::html::{self, escape, url_encode};
use super::queries::{self, InstanceFilter, MinuteOfFinishes, StateFilter, CHART_MINUTES};
use super::{page, Authorized, Dashboard, DashboardError};
use crate::{Event, EventType, Health, InstanceSnapshot, InstanceState, ListenerState};

/// `GET /`: per-queue counts, listener connections, the notification queue.
pub(crate) async fn overview(
    auth: Authorized,
    dashboard: web::Data<Dashboard>,
) -> Result<HttpResponse, DashboardError> {
    let overview = queries::overview(&dashboard.store).await?;
    let base = &dashboard.base;
    let mut body = String::from(
        "<h2>Queues</h2><table><tr><th>queue</th><th>active</th><th>claimable now</th>\
         <th>running (leased)</th><th>failing</th><th>activities ready</th>\
         <th>activities running</th><th>scheduled later</th><th>finished (1 h)</th>\
         <th>failed (1 h)</th></tr>",
    );
    for queue in &overview.queues {
        let stats = &queue.stats;
        let link = |state: &str, count: i64| {
            format!(
                "<a href=\"{}/instances{}\">{count}</a>",
                escape(base),
                html::query_string(&[("queue", &stats.queue), ("state", state)])
            )
        };
        let _ = write!(
            body,
            "<tr{stuck}><td><a href=\"{base}/instances{query}\">{queue}</a></td>\
             <td class=\"num\">{active}</td><td class=\"num\">{claimable}</td>\
             <td class=\"num\">{running}</td><td class=\"num\">{failing}</td>\
             <td class=\"num\">{ready}</td><td class=\"num\">{activities_running}</td>\
             <td class=\"num\">{later}</td><td class=\"num\">{finished}</td>\
             <td class=\"num\">{failed}</td></tr>",
            stuck = if stats.failing_workflow_tasks > 0 {
                " class=\"stuck\""
            } else {
                ""
            },
            base = escape(base),
            query = html::query_string(&[("queue", &stats.queue)]),
            queue = escape(&stats.queue),
            active = link("active", stats.active_instances),
            claimable = stats.claimable_workflow_tasks,
            running = queue.running_workflow_tasks,
            failing = link("stuck", stats.failing_workflow_tasks),
            ready = stats.ready_activities,
            activities_running = stats.running_activities,
            later = stats.scheduled_later,
            finished = queue.finished_last_hour,
            failed = queue.failed_last_hour,
        );
    }
    body.push_str("</table>");
    if overview.queues.is_empty() {
        body.push_str("<p class=\"muted\">No instances or activities yet.</p>");
    }
    body.push_str(&finishes_chart(&overview.minutes));
    body.push_str(
        "<h2>Listener connections</h2><table><tr><th>application_name</th>\
         <th>connections</th><th>states</th><th>oldest connected for</th></tr>",
    );
    for listener in &overview.listeners {
        let _ = write!(
            body,
            "<tr><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            escape(&listener.application_name),
            listener.connections,
            escape(&listener.states),
            escape(&listener.oldest_for)
        );
    }
    body.push_str("</table>");
    if overview.listeners.is_empty() {
        body.push_str("<p class=\"muted\">None: no runtime with notifications is connected.</p>");
    }
    let _ = write!(
        body,
        "<p>Notification queue usage: {:.4}%</p>",
        overview.notification_queue_usage * 100.0
    );
    if let Some(runtime) = &dashboard.options.runtime {
        this_process(&mut body, &runtime.health());
    }
    Ok(page(&auth, html::layout(base, "Overview", &body)))
}

/// The health of the runtime serving the dashboard: what its listeners and
/// workers report of themselves.
fn this_process(body: &mut String, health: &Health) {
    body.push_str(
        "<h2>This process</h2><table><tr><th>listener</th><th>kind</th><th>state</th>\
         <th>for</th><th>reconnects</th></tr>",
    );
    for listener in &health.listeners {
        let _ = write!(
            body,
            "<tr{}><td>{}</td><td>{:?}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
            if listener.state == ListenerState::Listening {
                ""
            } else {
                " class=\"stuck\""
            },
            escape(&listener.channel),
            listener.kind,
            escape(&format!("{:?}", listener.state)),
            html::gap(listener.for_how_long),
            listener.reconnects,
        );
    }
    body.push_str(
        "</table><table><tr><th>worker</th><th>kind</th><th>queues</th><th>busy</th>\
         <th>state</th></tr>",
    );
    for worker in &health.workers {
        let state = if worker.stopped {
            "stopped"
        } else if worker.stuck {
            "stuck"
        } else if worker.failing_for.is_some() {
            "failing"
        } else {
            "ok"
        };
        let _ = write!(
            body,
            "<tr{}><td>{}</td><td>{:?}</td><td>{}</td><td class=\"num\">{} of {}</td>\
             <td>{state}</td></tr>",
            if state == "ok" {
                ""
            } else {
                " class=\"stuck\""
            },
            escape(&worker.worker),
            worker.kind,
            escape(&worker.queues.join(", ")),
            worker.slots_used,
            worker.concurrency,
        );
    }
    body.push_str("</table>");
}

/// The executions that ended in each of the last minutes as an inline SVG:
/// a bar per minute for how many ended, dots joined by a line for their
/// mean time from creation to end, each minute's figures in a `<title>`
/// that browsers show on hover (no script, nothing to fetch).
fn finishes_chart(minutes: &[MinuteOfFinishes]) -> String {
    const WIDTH: f64 = 600.0;
    const HEIGHT: f64 = 100.0;
    /// Room above the tallest bar.
    const TOP: f64 = 8.0;
    let total: i64 = minutes.iter().map(|m| m.finished).sum();
    let most = minutes.iter().map(|m| m.finished).max().unwrap_or(0);
    let slowest = minutes
        .iter()
        .filter_map(|m| m.mean_latency)
        .fold(0.0, f64::max);
    let slot = WIDTH / minutes.len().max(1) as f64;
    let scale = |value: f64, max: f64| {
        if max > 0.0 {
            value / max * (HEIGHT - TOP)
        } else {
            0.0
        }
    };
    let mut svg = format!(
        "<h2>Finished per minute (last {CHART_MINUTES} minutes, UTC)</h2>\
         <svg viewBox=\"0 0 {WIDTH} {HEIGHT}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         role=\"img\" aria-label=\"executions finished per minute\" \
         style=\"background:#fff;border:1px solid #d5d9de\">"
    );
    let mut line = Vec::new();
    for (index, minute) in minutes.iter().enumerate() {
        let x = index as f64 * slot;
        let bar = scale(minute.finished as f64, most as f64);
        let start = SystemTime::UNIX_EPOCH
            + std::time::Duration::from_secs(u64::try_from(minute.minute_start).unwrap_or(0));
        let label = format!(
            "{}: {} finished{}",
            html::time(start).get(11..16).unwrap_or(""),
            minute.finished,
            minute
                .mean_latency
                .map(|mean| format!(
                    ", {} from start to end on average",
                    html::gap(std::time::Duration::from_secs_f64(mean.max(0.0)))
                ))
                .unwrap_or_default()
        );
        let _ = write!(
            svg,
            "<g><title>{}</title><rect x=\"{x:.1}\" y=\"0\" width=\"{slot:.1}\" \
             height=\"{HEIGHT}\" fill-opacity=\"0\"/><rect x=\"{:.1}\" y=\"{:.1}\" \
             width=\"{:.1}\" height=\"{bar:.1}\" fill=\"#457b9d\"/></g>",
            escape(&label),
            x + 1.0,
            HEIGHT - bar,
            (slot - 2.0).max(1.0),
        );
        if let Some(mean) = minute.mean_latency {
            let point = (x + slot / 2.0, HEIGHT - scale(mean, slowest));
            let _ = write!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\" fill=\"#e76f51\"/>",
                point.0, point.1
            );
            line.push(format!("{:.1},{:.1}", point.0, point.1));
        }
    }
    if line.len() > 1 {
        let _ = write!(
            svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"#e76f51\" stroke-width=\"1.5\"/>",
            line.join(" ")
        );
    }
    let _ = write!(
        svg,
        "</svg><p class=\"muted\">{total} finished in the last {CHART_MINUTES} minutes; \
         bars: executions finished (at most {most} in a minute); line: their mean time from \
         start to end (at most {}).</p>",
        html::gap(std::time::Duration::from_secs_f64(slowest.max(0.0)))
    );
    svg
}

/// The query of `GET /instances`, as typed: empty fields are no filter.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    queue: String,
    #[serde(default)]
    workflow: String,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    created_after: String,
    #[serde(default)]
    created_before: String,
    #[serde(default)]
    finished_after: String,
    #[serde(default)]
    finished_before: String,
    #[serde(default)]
    before: String,
    #[serde(default)]
    done: String,
}

fn non_empty(value: &str) -> Option<String> {
    let trimmed = value.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

impl ListQuery {
    fn filter(&self) -> Result<InstanceFilter, DashboardError> {
        let state = match non_empty(&self.state) {
            None => None,
            Some(name) => Some(StateFilter::parse(&name).ok_or_else(|| {
                DashboardError::BadRequest(format!(
                    "unknown state {name:?}: choose active, stuck, continued or finished"
                ))
            })?),
        };
        let before_row = match non_empty(&self.before) {
            None => None,
            Some(text) => Some(text.parse::<i64>().map_err(|_| {
                DashboardError::BadRequest(format!("the page start {text:?} is not a number"))
            })?),
        };
        Ok(InstanceFilter {
            state,
            queue: non_empty(&self.queue),
            workflow: non_empty(&self.workflow),
            id_prefix: non_empty(&self.prefix),
            created_after: non_empty(&self.created_after),
            created_before: non_empty(&self.created_before),
            finished_after: non_empty(&self.finished_after),
            finished_before: non_empty(&self.finished_before),
            before_row,
        })
    }

    /// The filters as query pairs, for the next page's link.
    fn pairs(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("state", self.state.trim()),
            ("queue", self.queue.trim()),
            ("workflow", self.workflow.trim()),
            ("prefix", self.prefix.trim()),
            ("created_after", self.created_after.trim()),
            ("created_before", self.created_before.trim()),
            ("finished_after", self.finished_after.trim()),
            ("finished_before", self.finished_before.trim()),
        ]
    }
}

/// A state's name as the list and the instance page show it: `failed`
/// for an execution whose finish event holds an error.
fn state_name(state: i32, task_attempts: i32, failed: bool) -> &'static str {
    match (state, task_attempts) {
        (0, attempts) if attempts > 0 => "active, failing",
        (0, _) => "active",
        (1, _) => "continued as new",
        _ if failed => "failed",
        _ => "finished",
    }
}

/// "1 attempt", "2 attempts".
fn attempts_text(attempts: impl Into<i64>) -> String {
    match attempts.into() {
        1 => "1 attempt".to_string(),
        n => format!("{n} attempts"),
    }
}

/// The event that ended the execution, if it ended.
fn end_event(snapshot: &InstanceSnapshot) -> Option<&Event> {
    snapshot.history.iter().rev().find(|event| {
        matches!(
            event.event_type,
            EventType::WorkflowExecutionFinished | EventType::WorkflowExecutionContinuedAsNew
        )
    })
}

/// `GET /instances`: the filter form and one page of executions.
pub(crate) async fn instances(
    auth: Authorized,
    dashboard: web::Data<Dashboard>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, DashboardError> {
    let query = query.into_inner();
    let filter = query.filter()?;
    let listed = queries::instances(&dashboard.store, &filter).await?;
    let base = escape(&dashboard.base);
    let mut body = String::new();
    if query.done == "removed" {
        body.push_str("<p class=\"notice\">The instance was removed.</p>");
    }
    let selected = |name: &str| {
        if query.state.trim() == name {
            " selected"
        } else {
            ""
        }
    };
    let _ = write!(
        body,
        "<form class=\"filters\" method=\"get\" action=\"{base}/instances\">\
         <label>state <select name=\"state\"><option value=\"\">any</option>\
         <option value=\"active\"{}>active</option><option value=\"stuck\"{}>failing</option>\
         <option value=\"continued\"{}>continued as new</option>\
         <option value=\"finished\"{}>finished</option></select></label>\
         <label>queue <input name=\"queue\" value=\"{}\" size=\"12\"></label>\
         <label>workflow <input name=\"workflow\" value=\"{}\" size=\"12\"></label>\
         <label>id prefix <input name=\"prefix\" value=\"{}\" size=\"12\"></label><br>\
         <label>created after <input name=\"created_after\" value=\"{}\" size=\"16\"></label>\
         <label>before <input name=\"created_before\" value=\"{}\" size=\"16\"></label>\
         <label>finished after <input name=\"finished_after\" value=\"{}\" size=\"16\"></label>\
         <label>before <input name=\"finished_before\" value=\"{}\" size=\"16\"></label>\
         <button type=\"submit\">Filter</button> <a href=\"{base}/instances\">clear</a>\
         <p class=\"muted\">Times in UTC unless they name an offset, as 2026-12-07 14:00.</p></form>",
        selected("active"),
        selected("stuck"),
        selected("continued"),
        selected("finished"),
        escape(query.queue.trim()),
        escape(query.workflow.trim()),
        escape(query.prefix.trim()),
        escape(query.created_after.trim()),
        escape(query.created_before.trim()),
        escape(query.finished_after.trim()),
        escape(query.finished_before.trim()),
    );
    body.push_str(
        "<table><tr><th>instance</th><th>workflow</th><th>queue</th><th>state</th>\
         <th>created</th><th>finished</th><th>failing task</th></tr>",
    );
    for row in &listed.rows {
        let stuck = row.state == 0 && (row.task_attempts > 0 || row.last_task_error.is_some());
        let _ = write!(
            body,
            "<tr{}><td><a href=\"{base}/instances/{}\">{}</a></td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if stuck { " class=\"stuck\"" } else { "" },
            url_encode(&row.instance_id),
            escape(&row.instance_id),
            escape(row.workflow.as_deref().unwrap_or("")),
            escape(&row.queue),
            state_name(row.state, row.task_attempts, row.failed),
            html::time(row.created_at),
            row.completed_at.map(html::time).unwrap_or_default(),
            if stuck {
                format!(
                    "{}: <span class=\"error\">{}</span>",
                    attempts_text(row.task_attempts),
                    escape(&first_line(row.last_task_error.as_deref().unwrap_or("")))
                )
            } else {
                String::new()
            },
        );
    }
    body.push_str("</table>");
    if listed.rows.is_empty() {
        body.push_str("<p class=\"muted\">No instance on this page matches.</p>");
    }
    if let Some(next) = listed.next_before_row {
        let next = next.to_string();
        let mut pairs = query.pairs();
        pairs.push(("before", &next));
        let _ = write!(
            body,
            "<p><a rel=\"next\" href=\"{base}/instances{}\">Older instances →</a></p>",
            html::query_string(&pairs)
        );
    }
    Ok(page(
        &auth,
        html::layout(&dashboard.base, "Instances", &body),
    ))
}

/// The first line of an error, cut to a table cell's worth.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("");
    match line.char_indices().nth(160) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_string(),
    }
}

/// The query of `GET /instances/{id}`: which action just succeeded.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct InstanceQuery {
    #[serde(default)]
    done: String,
}

/// `GET /instances/{id}`: the newest execution of the instance.
pub(crate) async fn instance(
    auth: Authorized,
    dashboard: web::Data<Dashboard>,
    instance_id: web::Path<String>,
    query: web::Query<InstanceQuery>,
) -> Result<HttpResponse, DashboardError> {
    let instance_id = instance_id.into_inner();
    let snapshot = dashboard
        .store
        .instance(&instance_id)
        .await?
        .ok_or_else(|| DashboardError::NotFound(instance_id.clone()))?;
    let details = queries::instance_details(
        &dashboard.store,
        &instance_id,
        &snapshot.instance.execution_id,
    )
    .await?;
    let base = escape(&dashboard.base);
    let mut body = String::new();
    if let Some(notice) = match query.done.as_str() {
        "cancel" => Some("Cancellation requested."),
        "cancel-finished" => Some("The instance had finished already; nothing was changed."),
        "signal" => Some("Signal sent."),
        "retry" => Some("Its workflow task is claimable now."),
        _ => None,
    } {
        let _ = write!(body, "<p class=\"notice\">{notice}</p>");
    }
    summary(&mut body, &base, &snapshot, &details);
    outcome(&mut body, &snapshot);
    timeline(&mut body, &snapshot.history);
    pending(&mut body, &snapshot.pending);
    activities(&mut body, &details);
    children(&mut body, &base, &details);
    if !dashboard.options.read_only {
        super::actions::forms(&mut body, &base, &snapshot);
    }
    Ok(page(
        &auth,
        html::layout(&dashboard.base, &format!("Instance {instance_id}"), &body),
    ))
}

fn summary(
    body: &mut String,
    base: &str,
    snapshot: &InstanceSnapshot,
    details: &queries::InstanceDetails,
) {
    let state = match snapshot.state {
        InstanceState::Active => 0,
        InstanceState::ContinuedAsNew => 1,
        _ => 2,
    };
    let attempts = i32::try_from(snapshot.task_attempts).unwrap_or(i32::MAX);
    let workflow = snapshot
        .metadata
        .as_ref()
        .and_then(|m| m.get("workflow"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or("");
    let _ = write!(
        body,
        "<table><tr><th>execution</th><td>{}</td></tr>\
         <tr><th>workflow</th><td>{}</td></tr>\
         <tr><th>queue</th><td><a href=\"{base}/instances{}\">{}</a></td></tr>\
         <tr><th>state</th><td>{}</td></tr>\
         <tr><th>created</th><td>{}</td></tr><tr><th>finished</th><td>{}</td></tr>",
        escape(&snapshot.instance.execution_id),
        escape(workflow),
        html::query_string(&[("queue", snapshot.queue.as_str())]),
        escape(snapshot.queue.as_str()),
        match end_event(snapshot) {
            Some(end) if end.attributes.get("canceled").is_some() => "canceled",
            end => state_name(
                state,
                attempts,
                end.is_some_and(|end| end.attributes.get("error").is_some())
            ),
        },
        html::time(snapshot.created_at),
        snapshot.completed_at.map(html::time).unwrap_or_default(),
    );
    if let Some(parent) = &details.parent_instance_id {
        let _ = write!(
            body,
            "<tr><th>parent</th><td><a href=\"{base}/instances/{}\">{}</a></td></tr>",
            url_encode(parent),
            escape(parent)
        );
    }
    if let Some(until) = details.locked_until {
        let holder = match &details.worker {
            Some(worker) => format!("held by {} until {}", escape(worker), html::time(until)),
            None if until > SystemTime::now() => {
                format!("retry not before {}", html::time(until))
            }
            None => format!("lock expired at {}", html::time(until)),
        };
        let _ = write!(body, "<tr><th>workflow task</th><td>{holder}</td></tr>");
    }
    if snapshot.task_attempts > 0 {
        let _ = write!(
            body,
            "<tr class=\"stuck\"><th>failing</th><td>{} in a row; last error:\
             <pre class=\"error\">{}</pre></td></tr>",
            attempts_text(snapshot.task_attempts),
            escape(snapshot.last_task_error.as_deref().unwrap_or(""))
        );
    }
    let _ = write!(body, "</table>");
}

/// The result or error, from the event that ended the execution.
fn outcome(body: &mut String, snapshot: &InstanceSnapshot) {
    let Some(end) = end_event(snapshot) else {
        return;
    };
    let attributes = &end.attributes;
    if let Some(error) = attributes.get("error") {
        let text = error
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| error.to_string());
        let _ = write!(
            body,
            "<h2>Error</h2><pre class=\"error\">{}</pre>",
            escape(&text)
        );
    } else if attributes.get("canceled").is_some() {
        body.push_str("<h2>Result</h2><p>Canceled.</p>");
    } else if let Some(result) = attributes.get("result") {
        let _ = write!(body, "<h2>Result</h2><pre>{}</pre>", html::json(result));
    } else {
        let _ = write!(body, "<h2>Result</h2><pre>{}</pre>", html::json(attributes));
    }
}

/// The history, in order, each event with the gap to the one before.
fn timeline(body: &mut String, history: &[Event]) {
    let _ = write!(
        body,
        "<h2>History ({} events)</h2><table class=\"timeline\"><tr><th>#</th><th>time</th>\
         <th>gap</th><th>event</th><th>answers</th><th>attributes</th></tr>",
        history.len()
    );
    let mut previous: Option<SystemTime> = None;
    for event in history {
        let _ = write!(
            body,
            "<tr><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td><td>{:?}</td>\
             <td class=\"num\">{}</td><td><pre>{}</pre></td></tr>",
            event.sequence_id,
            html::time(event.timestamp),
            previous
                .map(|before| html::gap_between(before, event.timestamp))
                .unwrap_or_default(),
            event.event_type,
            if event.schedule_event_id > 0 {
                format!("#{}", event.schedule_event_id)
            } else {
                String::new()
            },
            html::json(&event.attributes),
        );
        previous = Some(event.timestamp);
    }
    body.push_str("</table>");
}

/// Events waiting for the next workflow task; timers with their due time.
fn pending(body: &mut String, pending: &[Event]) {
    if pending.is_empty() {
        return;
    }
    let _ = write!(
        body,
        "<h2>Pending events and timers ({})</h2><table><tr><th>event</th><th>written</th>\
         <th>due</th><th>attributes</th></tr>",
        pending.len()
    );
    for event in pending {
        let _ = write!(
            body,
            "<tr><td>{:?}</td><td>{}</td><td>{}</td><td><pre>{}</pre></td></tr>",
            event.event_type,
            html::time(event.timestamp),
            event
                .visible_at
                .map(html::time)
                .unwrap_or_else(|| "now".to_string()),
            html::json(&event.attributes),
        );
    }
    body.push_str("</table>");
}

fn activities(body: &mut String, details: &queries::InstanceDetails) {
    if details.activities.is_empty() {
        return;
    }
    let _ = write!(
        body,
        "<h2>Activities in flight ({})</h2><table><tr><th>activity</th><th>name</th>\
         <th>queue</th><th>attempt</th><th>worker</th><th>leased until</th>\
         <th>visible from</th><th>scheduled</th></tr>",
        details.activities.len()
    );
    for activity in &details.activities {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&activity.activity_id),
            escape(activity.name().unwrap_or("")),
            escape(&activity.queue),
            activity.attempt(),
            escape(activity.worker.as_deref().unwrap_or("")),
            activity.locked_until.map(html::time).unwrap_or_default(),
            activity
                .visible_at
                .map(html::time)
                .unwrap_or_else(|| "now".to_string()),
            html::time(activity.scheduled_at),
        );
    }
    body.push_str("</table>");
}

fn children(body: &mut String, base: &str, details: &queries::InstanceDetails) {
    if details.children.is_empty() {
        return;
    }
    body.push_str(
        "<h2>Children</h2><table><tr><th>instance</th><th>state</th><th>created</th></tr>",
    );
    for child in &details.children {
        let _ = write!(
            body,
            "<tr><td><a href=\"{base}/instances/{}\">{}</a></td><td>{}</td><td>{}</td></tr>",
            url_encode(&child.instance_id),
            escape(&child.instance_id),
            state_name(child.state, 0, child.failed),
            html::time(child.created_at),
        );
    }
    body.push_str("</table>");
    if details.more_children {
        body.push_str("<p class=\"muted\">More children exist; the first 200 are listed.</p>");
    }
}
