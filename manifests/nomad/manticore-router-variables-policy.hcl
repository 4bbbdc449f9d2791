# Workload policy of the manticore-router job. Its tasks may read, with no policy, only the Nomad variables at
# nomad/jobs, nomad/jobs/manticore-router and below it by group and task, so the shared configuration at
# nomad/jobs/manticore needs this grant. The router's Consul token is in its own job's variable
# (nomad/jobs/manticore-router, key consul_token), so the edge nodes never see the Nomad token of
# nomad/jobs/manticore/secrets. Applied to the job's workload identity:
#   nomad acl policy apply -namespace default -job manticore-router -description "Manticore router: read the configuration" manticore-router-variables manifests/nomad/manticore-router-variables-policy.hcl
namespace "default" {
  variables {
    path "nomad/jobs/manticore" {
      capabilities = ["read"]
    }
  }
}
