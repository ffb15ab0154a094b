// The pod sandbox's process for the kubelet node test (see ../build.sh pause).
module qkms.test/controlplane/pause

go 1.26.0
