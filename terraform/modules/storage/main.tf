# The buckets of a hyperbatch deployment: the job store (job folders and their results), the
# input bucket (created here or an existing one) and the staging bucket (Dataflow temp files, the
# Flex Template spec). Every bucket has uniform bucket-level access and public access prevention
# enforced; CMEK is optional. Who may read or write is granted by the modules that need it.

locals {
  job_store_bucket = coalesce(var.job_store_bucket_name, "${var.project_id}-${var.name}-jobs")
  input_bucket     = coalesce(var.input_bucket.name, "${var.project_id}-${var.name}-inputs")
  staging_bucket   = coalesce(var.staging_bucket_name, "${var.project_id}-${var.name}-staging")
  labels           = merge({ "managed-by" = "terraform", "hyperbatch" = var.name }, var.labels)
  kms_key_names    = var.kms_key_name == null ? [] : [var.kms_key_name]
  log_buckets      = var.access_log_bucket == null ? [] : [var.access_log_bucket]
}

data "google_storage_project_service_account" "gcs" {
  project = var.project_id
}

# With CMEK the Cloud Storage service agent encrypts and decrypts objects with the key.
resource "google_kms_crypto_key_iam_member" "gcs_cmek" {
  count = var.kms_key_name == null ? 0 : 1

  crypto_key_id = var.kms_key_name
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

resource "google_storage_bucket" "job_store" {
  project                     = var.project_id
  name                        = local.job_store_bucket
  location                    = var.location
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy
  labels                      = local.labels

  # Versioning keeps a job's spec, status and results recoverable after an overwrite or delete.
  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_retention_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  # status.json is rewritten at every heartbeat: bound how many old versions pile up.
  lifecycle_rule {
    condition {
      num_newer_versions = var.max_noncurrent_versions
      with_state         = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  dynamic "encryption" {
    for_each = local.kms_key_names
    content {
      default_kms_key_name = encryption.value
    }
  }

  dynamic "logging" {
    for_each = local.log_buckets
    content {
      log_bucket        = logging.value
      log_object_prefix = local.job_store_bucket
    }
  }

  depends_on = [google_kms_crypto_key_iam_member.gcs_cmek]
}

resource "google_storage_bucket" "inputs" {
  count = var.input_bucket.create ? 1 : 0

  project                     = var.project_id
  name                        = local.input_bucket
  location                    = var.location
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy
  labels                      = local.labels

  # A job refuses inputs that changed under it; versions let an overwritten input be recovered.
  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_retention_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  dynamic "encryption" {
    for_each = local.kms_key_names
    content {
      default_kms_key_name = encryption.value
    }
  }

  dynamic "logging" {
    for_each = local.log_buckets
    content {
      log_bucket        = logging.value
      log_object_prefix = local.input_bucket
    }
  }

  depends_on = [google_kms_crypto_key_iam_member.gcs_cmek]
}

resource "google_storage_bucket" "staging" {
  #checkov:skip=CKV_GCP_78: temp/ holds Dataflow scratch files deleted after temp_retention_days and templates/ is rewritten by terraform apply; old versions would only be billed garbage
  project                     = var.project_id
  name                        = local.staging_bucket
  location                    = var.location
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy
  labels                      = local.labels

  # Deleted scratch files are not worth keeping (and paying for) in soft-deleted state.
  soft_delete_policy {
    retention_duration_seconds = 0
  }

  lifecycle_rule {
    condition {
      age            = var.temp_retention_days
      matches_prefix = ["temp/"]
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      age = 1
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  dynamic "encryption" {
    for_each = local.kms_key_names
    content {
      default_kms_key_name = encryption.value
    }
  }

  dynamic "logging" {
    for_each = local.log_buckets
    content {
      log_bucket        = logging.value
      log_object_prefix = local.staging_bucket
    }
  }

  depends_on = [google_kms_crypto_key_iam_member.gcs_cmek]
}
