output "requests_topic" {
  description = "The requests topic, projects/P/topics/T: publish job specs or JobRequests here."
  value       = local.topic_ids.requests
}

output "events_topic" {
  description = "The status-events topic, projects/P/topics/T (HYPERBATCH_EVENTS_TOPIC)."
  value       = local.topic_ids.events
}

output "dead_letter_topic" {
  description = "The dead-letter topic, projects/P/topics/T (HYPERBATCH_DEAD_LETTER_TOPIC)."
  value       = local.topic_ids.dead_letter
}

output "notifications_topic" {
  description = "The topic of the drop-a-spec notifications when it is not the requests topic (the requests topic has a schema); null otherwise."
  value       = local.topic_ids.notifications
}

output "request_schema_encoding" {
  description = "Encoding of the requests topic's schema (JSON or BINARY), or null when it has none: what a publisher must send."
  value       = var.request_schema_encoding
}

output "pull_subscription" {
  description = "The pull subscription of the requests topic, projects/P/subscriptions/S (HYPERBATCH_SUBSCRIPTION), or null."
  value       = var.pull_subscription ? "projects/${var.project_id}/subscriptions/${google_pubsub_subscription.trigger["requests-pull"].name}" : null
}

output "subscriptions" {
  description = "Every subscription made here by key (requests-pull, requests-push, notifications-pull, notifications-push), as projects/P/subscriptions/S."
  value       = { for k, s in google_pubsub_subscription.trigger : k => "projects/${var.project_id}/subscriptions/${s.name}" }
}

output "schema" {
  description = "The JobRequest schema, projects/P/schemas/S, or null."
  value       = var.request_schema_encoding == null ? null : google_pubsub_schema.job_request[0].id
}

output "pubsub_service_agent" {
  description = "The Pub/Sub service agent (member form); it needs token creator on a push service account."
  value       = local.pubsub_agent
}
