/*
 * proto.h: constants of the Provium agent wire protocol (docs/protocol.md)
 * and of the agent's own limits. Shared by every other file.
 */
#ifndef PROVIUM_PROTO_H
#define PROVIUM_PROTO_H

/* Frame header: "PV", u16 LE channel, u32 LE payload length. */
#define FRAME_MAGIC0 'P'
#define FRAME_MAGIC1 'V'
#define FRAME_HEADER 8
#define MAX_PAYLOAD 2097152u /* 2 MiB: larger frames are refused before allocating */

#define PROTO_VERSION 1
#define AGENT_NAME "provium-agent/0.1.0"

#define CHAN_ROUTER 0 /* control ops answered by the router itself */
#define CHAN_MAIN 1   /* the VM's main worker */

#define CHUNK (1024 * 1024)      /* read_file partial replies carry at most this much */
#define EXEC_CHUNK (64 * 1024)   /* exec partial replies carry at most this much */
#define SYSCALL_MAX_ARGS 6       /* a syscall takes at most this many arguments */

#define PORT_NAME "provium.agent"                  /* virtio-serial port name */
#define AGENT_PATH "/usr/sbin:/usr/bin:/sbin:/bin" /* PATH of everything started */
#define AGENT_HOME "/root"

#endif
