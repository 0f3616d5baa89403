//! `GET /api/v1/certificates`, `GET /api/v1/certificates/{sn}`, `PUT
//! /api/v1/certificates/{sn}`: the device certificate registry (issue 16), cluster-wide.
//! Any node answers from the registry it has applied and writes through the cluster's log;
//! a status other than active ends the connections that use the certificate on every node.
//!
//! A certificate shows the seed's field names (`sn`, `caSn`, `commonName`, `status`,
//! `certificateChainSn`) and when and by which node it was registered and last changed.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use skein_seam::{CertificateRecord, CertificateStatus};

use super::params::{Listing, Params, RawQuery};
use super::ApiError;
use crate::broker::Broker;

const LIST_PARAMS: &[&str] = &["page", "limit", "status", "common_name"];

/// One certificate as the API shows it.
#[derive(Debug, Serialize)]
pub struct CertificateView {
    pub sn: String,
    #[serde(rename = "caSn")]
    pub ca_sn: String,
    #[serde(rename = "commonName")]
    pub common_name: String,
    pub status: &'static str,
    #[serde(rename = "certificateChainSn")]
    pub certificate_chain_sn: String,
    /// The name of the node that registered it (null: a node the cluster no longer has a
    /// record of), and its id.
    pub registered_by: Option<String>,
    pub registered_by_id: u64,
    /// Unix milliseconds of the registration and of the last status change.
    pub registered_at: u64,
    pub updated_at: u64,
}

impl CertificateView {
    fn of(record: CertificateRecord, broker: &Broker) -> CertificateView {
        CertificateView {
            registered_by: broker
                .cluster
                .node_record(record.registered_by)
                .map(|n| n.name),
            registered_by_id: record.registered_by.0,
            sn: record.seen.sn,
            ca_sn: record.seen.ca_sn,
            common_name: record.seen.common_name,
            status: record.status.as_str(),
            certificate_chain_sn: record.seen.chain_sn,
            registered_at: record.registered_at_ms,
            updated_at: record.updated_at_ms,
        }
    }
}

/// The body of a PUT. Unknown fields are refused, so a misspelt one isn't silently lost.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusRequest {
    status: String,
}

/// Every certificate, in serial number order, paged; `?status=` and `?common_name=` keep
/// those that match exactly.
#[tracing::instrument(name = "admin_list_certificates", skip_all)]
pub async fn list(
    State(broker): State<Arc<Broker>>,
    query: RawQuery,
) -> Result<Json<Listing<CertificateView>>, ApiError> {
    let params = Params::parse(query, LIST_PARAMS)?;
    let paging = params.paging()?;
    let status = params.get("status").map(parse_status).transpose()?;
    let common_name = params.get("common_name");
    let mut records = broker.cluster.certificates();
    records.retain(|r| {
        status.is_none_or(|s| s == r.status)
            && common_name.is_none_or(|cn| cn == r.seen.common_name)
    });
    Ok(Json(
        paging.apply(records, |r| CertificateView::of(r, &broker)),
    ))
}

#[tracing::instrument(name = "admin_certificate_detail", skip_all, fields(sn))]
pub async fn detail(
    State(broker): State<Arc<Broker>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<CertificateView>, ApiError> {
    let sn = serial(path)?;
    tracing::Span::current().record("sn", sn.as_str());
    let record = broker
        .cluster
        .certificate(&sn)
        .ok_or(ApiError::NotFound("certificate not found".into()))?;
    Ok(Json(CertificateView::of(record, &broker)))
}

/// Sets the certificate's status (`{"status": "revoked"}`); answers the certificate as it
/// is now. A status other than active ends the connections that use it, on every node
/// (DISCONNECT 0x98 to MQTT 5 clients, reason `kicked`).
#[tracing::instrument(name = "admin_set_certificate_status", skip_all, fields(sn, status))]
pub async fn update(
    State(broker): State<Arc<Broker>>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<CertificateView>, ApiError> {
    let sn = serial(path)?;
    tracing::Span::current().record("sn", sn.as_str());
    let body = body.map_err(|e| ApiError::Body(e.status(), e.body_text()))?;
    let request: StatusRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid certificate update: {e}")))?;
    let status = parse_status(&request.status)?;
    tracing::Span::current().record("status", status.as_str());
    let record = broker
        .cluster
        .set_certificate_status(&sn, status)
        .await
        .map_err(|e| match e {
            skein_seam::ClusterError::NotFound(_) => {
                ApiError::NotFound("certificate not found".into())
            }
            other => other.into(),
        })?;
    tracing::info!("certificate status set by an operator");
    Ok(Json(CertificateView::of(record, &broker)))
}

fn parse_status(text: &str) -> Result<CertificateStatus, ApiError> {
    CertificateStatus::parse(text).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "status {text:?} is not one of pending_activation, active, inactive, revoked"
        ))
    })
}

/// The `{sn}` segment: a serial number in hex, taken in lower case (as the registry keys
/// it; `openssl x509 -serial` prints upper case).
fn serial(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(sn) = path.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if sn.is_empty() || sn.len() > 128 || !sn.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::BadRequest(format!(
            "a certificate serial number is 1 to 128 hex digits, not {sn:?}"
        )));
    }
    Ok(sn.to_ascii_lowercase())
}
