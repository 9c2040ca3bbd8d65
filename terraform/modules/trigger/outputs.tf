output "url" {
  description = "URL of the Cloud Run service."
  value       = google_cloud_run_v2_service.trigger.uri
}

output "push_endpoint" {
  description = "Where push subscriptions deliver: the service's root path."
  value       = "${google_cloud_run_v2_service.trigger.uri}/"
}

output "push_audience" {
  description = "OIDC audience the push subscriptions must sign their tokens for (HYPERBATCH_PUSH_AUDIENCE)."
  value       = local.audience
}

output "push_service_account" {
  description = "Email of the push service account: the push subscriptions' OIDC identity, and the only run.invoker."
  value       = google_service_account.push.email
}

output "service_account" {
  description = "Email of the service's own service account."
  value       = google_service_account.trigger.email
}

output "service_account_member" {
  description = "The service's own service account as an IAM member (serviceAccount:...), for launcher_members of the dataflow module."
  value       = "serviceAccount:${google_service_account.trigger.email}"
}

output "service_name" {
  description = "Name of the Cloud Run service."
  value       = google_cloud_run_v2_service.trigger.name
}

output "command" {
  description = "The container's command line: command and args."
  value       = concat(local.command, local.args)
}
