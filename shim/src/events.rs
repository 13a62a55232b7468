//! Where task events go: containerd's event service in production, a
//! recorder in tests.

use std::sync::Mutex;

use async_trait::async_trait;
use containerd_shim::event::Event;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim_protos::protobuf::MessageDyn;

#[async_trait]
pub trait EventSink: Send + Sync {
    async fn publish(&self, topic: String, event: Box<dyn MessageDyn>);
}

/// Publishes one task event under its own topic.
pub async fn publish<E: Event + 'static>(sink: &dyn EventSink, event: E) {
    sink.publish(event.topic(), Box::new(event)).await;
}

/// containerd's `/run/containerd/containerd.sock.ttrpc` event service.
pub struct ContainerdEvents {
    publisher: RemotePublisher,
    namespace: String,
}

impl ContainerdEvents {
    pub fn new(publisher: RemotePublisher, namespace: &str) -> Self {
        ContainerdEvents {
            publisher,
            namespace: namespace.to_string(),
        }
    }
}

#[async_trait]
impl EventSink for ContainerdEvents {
    async fn publish(&self, topic: String, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .publisher
            .publish(Default::default(), &topic, &self.namespace, event)
            .await
        {
            tracing::warn!(%topic, error = %e, "publishing an event failed");
        }
    }
}

/// Keeps every event as (topic, encoded message), for tests.
#[derive(Default)]
pub struct RecordedEvents {
    pub events: Mutex<Vec<(String, Vec<u8>)>>,
}

impl RecordedEvents {
    pub fn topics(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| t.clone())
            .collect()
    }
}

#[async_trait]
impl EventSink for RecordedEvents {
    async fn publish(&self, topic: String, event: Box<dyn MessageDyn>) {
        let bytes = event.write_to_bytes_dyn().unwrap_or_default();
        self.events.lock().unwrap().push((topic, bytes));
    }
}
