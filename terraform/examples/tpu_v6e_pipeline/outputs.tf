output "cli_env" {
  description = "eval \"$(terraform output -raw cli_env)\" sets what the CLI needs."
  value       = module.hyperbatch.cli_env
}

output "worker_shape" {
  description = "The default TPU worker: ct6e-standard-4t, topology 2x2."
  value       = module.hyperbatch.worker_shape
}

output "pipeline_spec_url" {
  description = "The spec the pipeline wrote under the watched prefix."
  value       = module.catalogue_summaries.spec_url
}
