# What a pipeline publishes: the spec object it writes and the JobRequest that names it. This file
# reads variables only, so the test can evaluate it with `terraform console` and no provider.

locals {
  # The cap: max_cost_usd if set, else the spec's own, else default_max_cost_usd.
  spec_document = merge(
    var.default_max_cost_usd == null ? {} : { max_cost_usd = var.default_max_cost_usd },
    yamldecode(var.spec),
    var.max_cost_usd == null ? {} : { max_cost_usd = var.max_cost_usd },
  )

  watched = var.watch_prefix != null
  spec_object = {
    bucket = local.watched ? try(regex("^gs://([^/]+)/", var.watch_prefix)[0], null) : var.spec_bucket
    name   = local.watched ? "${try(regex("^gs://[^/]+/(.*)$", var.watch_prefix)[0], "")}${var.name}.json" : "${var.spec_prefix}/${var.name}.json"
  }
  spec_url     = "gs://${coalesce(local.spec_object.bucket, "-")}/${local.spec_object.name}"
  submitted_by = coalesce(var.submitted_by, "${local.watched ? "terraform" : "cloud-scheduler"}/${var.name}")

  # A JobRequest (schemas/job_request.avsc) naming the spec object. No job_id: an id fixed here
  # would make every run the same job, so the trigger derives it from the message id, and each
  # scheduled publish (redelivered or not) is exactly one job.
  request_attributes = {
    submitted_by        = local.submitted_by
    hyperbatch_pipeline = var.name
  }
  request_body = (
    var.request_encoding == "JSON"
    # Avro's JSON encoding, as a topic with the JobRequest schema and JSON encoding expects.
    ? jsonencode({
      job_id       = null
      spec_json    = null
      spec_url     = { string = local.spec_url }
      submitted_by = { string = local.submitted_by }
      overrides    = {}
    })
    : jsonencode({ spec_url = local.spec_url, submitted_by = local.submitted_by })
  )
}
