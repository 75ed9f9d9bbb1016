"""Work spread as Ray tasks across the cluster, under the stages that use it."""
