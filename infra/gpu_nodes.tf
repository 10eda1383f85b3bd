# The GPU managed node group the Ray GPU workers run on (k8s/base/ray/raycluster.yaml:
# nodeSelector mlops.example.com/node-pool=gpu, toleration nvidia.com/gpu). It idles at
# zero nodes; the cluster autoscaler adds nodes when the Ray autoscaler creates GPU pods.
# The cluster itself (and its OIDC provider) is an input, not created here.
locals {
  gpu_node_label = { "mlops.example.com/node-pool" = "gpu" }
}

data "aws_iam_policy_document" "gpu_node_trust" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "gpu_node" {
  name               = "${local.name_prefix}-gpu-node"
  assume_role_policy = data.aws_iam_policy_document.gpu_node_trust.json
}

# The AWS managed policies every EKS node needs; pods get their own rights through IRSA.
resource "aws_iam_role_policy_attachment" "gpu_node" {
  for_each = toset([
    "AmazonEKSWorkerNodePolicy",
    "AmazonEKS_CNI_Policy",
    "AmazonEC2ContainerRegistryReadOnly",
  ])

  role       = aws_iam_role.gpu_node.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/${each.key}"
}

resource "aws_eks_node_group" "gpu" {
  cluster_name    = var.cluster_name
  node_group_name = "${local.name_prefix}-gpu"
  node_role_arn   = aws_iam_role.gpu_node.arn
  subnet_ids      = var.gpu_subnet_ids

  ami_type       = "AL2023_x86_64_NVIDIA" # EKS-optimized, NVIDIA driver and container toolkit
  capacity_type  = var.gpu_capacity_type
  instance_types = var.gpu_instance_types
  disk_size      = var.gpu_disk_size_gb

  scaling_config {
    min_size     = 0
    desired_size = 0
    max_size     = var.gpu_max_nodes
  }

  update_config {
    max_unavailable = 1
  }

  labels = local.gpu_node_label

  # Only pods that tolerate it (the Ray GPU workers) land on a GPU node.
  taint {
    key    = "nvidia.com/gpu"
    value  = "true"
    effect = "NO_SCHEDULE"
  }

  # What cluster-autoscaler needs to scale this group up from zero nodes.
  tags = {
    "k8s.io/cluster-autoscaler/enabled"                                         = "true"
    "k8s.io/cluster-autoscaler/${var.cluster_name}"                             = "owned"
    "k8s.io/cluster-autoscaler/node-template/label/mlops.example.com/node-pool" = "gpu"
    "k8s.io/cluster-autoscaler/node-template/taint/nvidia.com/gpu"              = "true:NoSchedule"
    "k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu"          = "1"
  }

  lifecycle {
    # The autoscaler owns the current size.
    ignore_changes = [scaling_config[0].desired_size]
  }

  depends_on = [aws_iam_role_policy_attachment.gpu_node]
}
