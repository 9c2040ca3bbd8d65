output "cli_env" {
  description = "eval \"$(terraform output -raw cli_env)\" sets what the CLI needs."
  value       = module.hyperbatch.cli_env
}

output "trigger_url" {
  description = "The Cloud Run trigger (internal ingress)."
  value       = module.hyperbatch.trigger_url
}

output "requests_topic" {
  description = "Publish job specs here; the push trigger launches them."
  value       = module.hyperbatch.requests_topic
}

output "spec_drop_prefix" {
  description = "Or copy a spec file here."
  value       = module.hyperbatch.spec_drop_prefix
}
