output "cli_env" {
  description = "eval \"$(terraform output -raw cli_env)\" sets what the CLI needs."
  value       = module.hyperbatch.cli_env
}

output "buckets" {
  description = "Bucket names by role: jobs, inputs, staging."
  value       = module.hyperbatch.buckets
}

output "images" {
  description = "Images to build and push: worker (worker-cpu), launcher, trigger."
  value       = module.hyperbatch.images
}

output "requests_topic" {
  description = "Publish job specs here."
  value       = module.hyperbatch.requests_topic
}
