# The control plane's messaging: the requests topic (job requests; optionally with a Pub/Sub
# schema read from schemas/job_request.avsc), the status-events topic, the dead-letter topic; the
# trigger's pull and/or push subscriptions, each with a dead-letter and a retry policy; the Cloud
# Storage notification of the drop-a-spec folder. As terraform-google-pubsub does, the Pub/Sub
# service agent may publish to the dead-letter topic and subscribe to every source subscription.

locals {
  labels = merge({ "managed-by" = "terraform", "hyperbatch" = var.name }, var.labels)

  job_request_schema_file = coalesce(var.job_request_schema_file, "${path.module}/../../../schemas/job_request.avsc")
  schema_encodings        = var.request_schema_encoding == null ? [] : [var.request_schema_encoding]

  # Cloud Storage notifications are not JobRequests: a requests topic with a schema would refuse
  # them, so they get a topic (and subscriptions) of their own.
  separate_notification_topic = var.request_schema_encoding != null && var.spec_notification != null
  notification_topics         = local.separate_notification_topic ? ["notifications"] : []

  # Source topics of the trigger, by key; ids are built from names so they are known at plan.
  topic_ids = {
    requests      = "projects/${var.project_id}/topics/${google_pubsub_topic.requests.name}"
    events        = "projects/${var.project_id}/topics/${google_pubsub_topic.events.name}"
    dead_letter   = "projects/${var.project_id}/topics/${google_pubsub_topic.dead_letter.name}"
    notifications = local.separate_notification_topic ? "projects/${var.project_id}/topics/${google_pubsub_topic.notifications[0].name}" : null
  }
  source_keys = concat(["requests"], local.notification_topics)

  subscriptions = merge(
    var.pull_subscription ? { for k in local.source_keys : "${k}-pull" => { source = k, push = false } } : {},
    var.push != null ? { for k in local.source_keys : "${k}-push" => { source = k, push = true } } : {},
  )
  pull_subscriptions = { for k, s in local.subscriptions : k => s if !s.push }

  pubsub_agent = "serviceAccount:${google_project_service_identity.pubsub.email}"
  kms_key_ids  = var.kms_key_name == null ? {} : { topics = var.kms_key_name }

  subscriber_grants = merge([
    for member_key, member in var.subscribers : merge([
      for sub_key, sub in local.pull_subscriptions : {
        "${member_key}/${sub_key}/subscriber" = { member = member, subscription = sub_key, role = "roles/pubsub.subscriber" }
        "${member_key}/${sub_key}/viewer"     = { member = member, subscription = sub_key, role = "roles/pubsub.viewer" }
      }
    ]...)
  ]...)
}

# The Pub/Sub service agent, created if the project does not have it yet.
resource "google_project_service_identity" "pubsub" {
  provider = google-beta

  project = var.project_id
  service = "pubsub.googleapis.com"
}

resource "google_kms_crypto_key_iam_member" "pubsub_cmek" {
  for_each = local.kms_key_ids

  crypto_key_id = each.value
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = local.pubsub_agent
}

resource "google_pubsub_schema" "job_request" {
  count = var.request_schema_encoding == null ? 0 : 1

  project    = var.project_id
  name       = "${var.name}-job-request"
  type       = "AVRO"
  definition = file(local.job_request_schema_file)
}

resource "google_pubsub_topic" "requests" {
  project      = var.project_id
  name         = "${var.name}-requests"
  labels       = local.labels
  kms_key_name = var.kms_key_name

  dynamic "schema_settings" {
    for_each = local.schema_encodings
    content {
      schema   = google_pubsub_schema.job_request[0].id
      encoding = schema_settings.value
    }
  }

  depends_on = [google_kms_crypto_key_iam_member.pubsub_cmek]
}

resource "google_pubsub_topic" "notifications" {
  count = local.separate_notification_topic ? 1 : 0

  project      = var.project_id
  name         = "${var.name}-spec-notifications"
  labels       = local.labels
  kms_key_name = var.kms_key_name

  depends_on = [google_kms_crypto_key_iam_member.pubsub_cmek]
}

# Job state changes (schemas/job_event.avsc as JSON); consumers bring their own subscriptions.
resource "google_pubsub_topic" "events" {
  project      = var.project_id
  name         = "${var.name}-events"
  labels       = local.labels
  kms_key_name = var.kms_key_name

  depends_on = [google_kms_crypto_key_iam_member.pubsub_cmek]
}

# Messages that can never become a job: forwarded by the trigger with the reason as attributes,
# or by Pub/Sub after max_delivery_attempts. The topic retains them for a later seek.
resource "google_pubsub_topic" "dead_letter" {
  project                    = var.project_id
  name                       = "${var.name}-dead-letter"
  labels                     = local.labels
  kms_key_name               = var.kms_key_name
  message_retention_duration = var.dead_letter_retention_duration

  depends_on = [google_kms_crypto_key_iam_member.pubsub_cmek]
}

resource "google_pubsub_topic_iam_member" "dead_letter_agent_publisher" {
  project = var.project_id
  topic   = google_pubsub_topic.dead_letter.name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_agent
}

resource "google_pubsub_subscription" "trigger" {
  for_each = local.subscriptions

  project                    = var.project_id
  name                       = "${var.name}-${each.key}"
  topic                      = local.topic_ids[each.value.source]
  labels                     = local.labels
  ack_deadline_seconds       = var.ack_deadline_seconds
  message_retention_duration = var.message_retention_duration
  retain_acked_messages      = false

  # The trigger is the only consumer: never let an idle subscription expire.
  expiration_policy {
    ttl = ""
  }

  dead_letter_policy {
    dead_letter_topic     = local.topic_ids.dead_letter
    max_delivery_attempts = var.max_delivery_attempts
  }

  retry_policy {
    minimum_backoff = var.minimum_backoff
    maximum_backoff = var.maximum_backoff
  }

  # The push envelope ({"message": ..., "subscription": ...}) is what the trigger parses.
  dynamic "push_config" {
    for_each = each.value.push ? [var.push] : []
    content {
      push_endpoint = push_config.value.endpoint

      oidc_token {
        service_account_email = push_config.value.service_account_email
        audience              = push_config.value.audience
      }
    }
  }

  depends_on = [google_pubsub_topic_iam_member.dead_letter_agent_publisher]
}

# The service agent acknowledges the messages it forwards to the dead-letter topic.
resource "google_pubsub_subscription_iam_member" "dead_letter_agent_subscriber" {
  for_each = local.subscriptions

  project      = var.project_id
  subscription = google_pubsub_subscription.trigger[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}

resource "google_pubsub_topic_iam_member" "request_publishers" {
  for_each = var.publishers

  project = var.project_id
  topic   = google_pubsub_topic.requests.name
  role    = "roles/pubsub.publisher"
  member  = each.value
}

resource "google_pubsub_topic_iam_member" "event_publishers" {
  for_each = var.event_publishers

  project = var.project_id
  topic   = google_pubsub_topic.events.name
  role    = "roles/pubsub.publisher"
  member  = each.value
}

# A pull listener forwards messages that can never be a job to the dead-letter topic itself.
resource "google_pubsub_topic_iam_member" "listener_dead_letter" {
  for_each = var.subscribers

  project = var.project_id
  topic   = google_pubsub_topic.dead_letter.name
  role    = "roles/pubsub.publisher"
  member  = each.value
}

resource "google_pubsub_subscription_iam_member" "listeners" {
  for_each = local.subscriber_grants

  project      = var.project_id
  subscription = google_pubsub_subscription.trigger[each.value.subscription].name
  role         = each.value.role
  member       = each.value.member
}

# ------------------------------------------------------------------ drop-a-spec notifications

data "google_storage_project_service_account" "gcs" {
  count = var.spec_notification == null ? 0 : 1

  project = var.project_id
}

resource "google_pubsub_topic_iam_member" "gcs_publisher" {
  count = var.spec_notification == null ? 0 : 1

  project = var.project_id
  topic   = local.separate_notification_topic ? google_pubsub_topic.notifications[0].name : google_pubsub_topic.requests.name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${data.google_storage_project_service_account.gcs[0].email_address}"
}

resource "google_storage_notification" "specs" {
  count = var.spec_notification == null ? 0 : 1

  bucket             = var.spec_notification.bucket
  object_name_prefix = var.spec_notification.prefix
  event_types        = ["OBJECT_FINALIZE"]
  payload_format     = "JSON_API_V1"
  topic              = local.separate_notification_topic ? local.topic_ids.notifications : local.topic_ids.requests

  depends_on = [google_pubsub_topic_iam_member.gcs_publisher]
}
