#!/usr/bin/env bash
# test_cluster_delivery.sh with the store on a three-member etcd cluster instead of one Redis: the same checks.
OA_CLUSTER_STORE=etcd exec bash "$(dirname "$0")/test_cluster_delivery.sh"
