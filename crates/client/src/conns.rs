//! The client's connections: at most one live [`Connection`] per OSD, dialled on first use
//! and re-dialled on the next use after it closed (or after the OSD's address changed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::conn::Connection;

type Slot = Arc<tokio::sync::Mutex<Option<Arc<Connection>>>>;

#[derive(Default)]
pub(crate) struct Connections {
    slots: Mutex<HashMap<u32, Slot>>,
}

impl Connections {
    /// A live connection to OSD `osd` at `addr`. Dials of one OSD are serialized, so
    /// concurrent first uses share one connection; the caller bounds the time this takes.
    pub(crate) async fn get(&self, osd: u32, addr: &str) -> Result<Arc<Connection>, String> {
        let slot = self.slots.lock().unwrap_or_else(|e| e.into_inner()).entry(osd).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.is_closed() && c.addr() == addr {
                return Ok(c.clone());
            }
        }
        *slot = None;
        let c = Arc::new(Connection::dial(osd, addr).await?);
        *slot = Some(c.clone());
        Ok(c)
    }
}
