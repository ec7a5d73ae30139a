//! Calls the cache does not keep (writes, connections, uncached reads): the
//! miss path, then the upstream's answer with the tenant's metadata.

use std::sync::Arc;

use super::answer::{note, pass_headers, remaining_header};
use super::{Asked, Shared, StageResult};
use crate::error::GatewayError;
use crate::response::{PageMeta, page_body, page_response};

impl Shared {
    /// Runs the miss path (in its own task) and answers with what it got.
    pub(super) async fn uncached(self: &Arc<Self>, asked: &Asked) -> StageResult {
        let Asked {
            tenant,
            context,
            call,
        } = asked;
        let charged = match self.fetch(asked.miss()).await {
            Ok(result) => result?,
            Err(join) => {
                return Err(GatewayError::ServiceUnavailable {
                    detail: format!("miss task failed: {join}"),
                });
            }
        };
        note(context, None, Some(charged.reply.upstream_ms));
        let connected = call
            .is_connect()
            .then(|| connected_account(&charged.reply.data))
            .flatten();
        if let Some((account_id, true)) = &connected {
            tracing::info!(
                request_id = context.request_id_str(),
                tenant = &*tenant.id,
                account_id = account_id.as_str(),
                "account connected"
            );
        }
        let meta = PageMeta {
            action: &call.action,
            account_id: connected
                .as_ref()
                .map_or(call.account_id.as_str(), |(id, _)| id.as_str()),
            credits_consumed: charged.credits,
            timestamp: self.clock.wall(),
            cache: None,
            credits_remaining: charged.balance.remaining(),
        };
        let mut response =
            page_response(charged.reply.status, page_body(&charged.reply.data, &meta));
        pass_headers(&mut response, &charged.reply.headers);
        remaining_header(&mut response, tenant, &charged.balance);
        Ok(response)
    }
}

/// The account a login or checkpoint answer names, and whether it is
/// connected now (not waiting for a checkpoint).
fn connected_account(data: &[u8]) -> Option<(String, bool)> {
    #[derive(serde::Deserialize)]
    struct Connected {
        account_id: String,
        #[serde(default)]
        status: Option<String>,
    }
    let c: Connected = serde_json::from_slice(data).ok()?;
    let done = c.status.as_deref() != Some("checkpoint_required");
    Some((c.account_id, done))
}
