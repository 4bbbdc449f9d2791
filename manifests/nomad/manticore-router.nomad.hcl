# Manticore's router: on every edge node (node meta manticore_edge = "true"), HAProxy serving the session
# routes on the host network (HTTP/websocket on 8080, the TCP range 20000-20999) and the agent that keeps
# its maps equal to the routes in Consul, with no reload. Nomad does not know HAProxy holds those ports, and
# its dynamic ports (20000-32000 by default) hold the TCP range: each edge node reserves them in its client
# configuration (reserved { reserved_ports = "8080,20000-20999" }, docs/operations.md, step 3).
#   nomad job run -var image=<your manticore router image> manifests/nomad/manticore-router.nomad.hcl
# The image is the Dockerfile's `router` target (`docker build --target router -t <image> .`). Its status
# server (/healthz, /readyz, /status, /metrics) listens on 8405.
# The configuration is the manticore job's (Nomad variable nomad/jobs/manticore, key config), which this job
# may read once manticore-router-variables-policy.hcl is applied to it; the Consul token is this job's own
# variable nomad/jobs/manticore-router (key consul_token): the edge nodes get no Nomad token.

variable "image" {
  type        = string
  description = "Manticore router container image (the Dockerfile's router target, with HAProxy)"
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

job "manticore-router" {
  type        = "system"
  datacenters = var.datacenters

  constraint {
    attribute = "${meta.manticore_edge}"
    value     = "true"
  }

  group "router" {
    # With router.tls: the edge certificate's directory on each edge node (a Nomad client host_volume, kept
    # current by the node's renewer, e.g. certbot's deploy hook copying into it). Mount the directory, not the
    # files: renewers replace files by rename, which a mounted file would never show.
    # volume "edge-tls" {
    #   type      = "host"
    #   source    = "manticore-tls"
    #   read_only = true
    # }

    network {
      mode = "host"

      port "status" {
        static = 8405
      }

      port "haproxy-stats" {
        static = 8404
      }
    }

    service {
      name     = "manticore-router"
      port     = "status"
      provider = "consul"

      check {
        type     = "http"
        path     = "/readyz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "router" {
      driver = "docker"
      # SIGTERM first: the process hands over or finishes its work within shutdown.graceSeconds (20).
      kill_timeout = "30s"

      config {
        image        = var.image
        network_mode = "host"
        args         = ["router", "--config", "/local/manticore.yaml"]
      }

      # volume_mount {
      #   volume      = "edge-tls"
      #   destination = "/etc/manticore/tls"
      #   read_only   = true
      # }

      template {
        data        = "{{ with nomadVar \"nomad/jobs/manticore\" }}{{ .config }}{{ end }}"
        destination = "local/manticore.yaml"
      }

      template {
        data        = <<-EOT
          CONSUL_HTTP_ADDR=http://{{ env "attr.unique.network.ip-address" }}:8500
          MANTICORE_ROUTER_NAME={{ env "node.unique.name" }}
          MANTICORE_ROUTER_STATUS_HOST=0.0.0.0
          MANTICORE_ROUTER_STATUS_PORT=8405
          {{ with nomadVar "nomad/jobs/manticore-router" }}CONSUL_HTTP_TOKEN={{ .consul_token }}{{ end }}
        EOT
        destination = "secrets/manticore.env"
        env         = true
      }

      resources {
        cpu    = 1000
        memory = 512
      }
    }
  }
}
