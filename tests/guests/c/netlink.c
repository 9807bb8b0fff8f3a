/* netlink: the interfaces as getifaddrs and if_nameindex see them (both ask NETLINK_ROUTE: RTM_GETLINK, RTM_GETADDR),
 * and if_nametoindex and if_indextoname (the SIOCGIFINDEX and SIOCGIFNAME ioctls), one fact a line. By default only the loopback is printed, which is the same natively and in Kiln: `lo` with its
 * flags, 127.0.0.1/8 and ::1/128. With `all`, every other interface too (name, flags, MTU-free facts: its addresses
 * and prefix lengths, whether it has a hardware address). Exits 0 if `lo` was found whole. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netpacket/packet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int prefix_len(const struct sockaddr *mask) {
  const unsigned char *bytes;
  int len;
  if (mask->sa_family == AF_INET) {
    bytes = (const unsigned char *)&((const struct sockaddr_in *)mask)->sin_addr;
    len = 4;
  } else {
    bytes = (const unsigned char *)&((const struct sockaddr_in6 *)mask)->sin6_addr;
    len = 16;
  }
  int bits = 0;
  for (int i = 0; i < len; i++) bits += __builtin_popcount(bytes[i]);
  return bits;
}

/* Whether /proc/net/`file` lists `hex` (a group as that file writes it). */
static int listed(const char *file, const char *hex) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/net/%s", file);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  int found = 0;
  while (fgets(line, sizeof line, f)) found |= strstr(line, hex) != NULL;
  fclose(f);
  return found;
}

/* Multicast memberships show in /proc/net/igmp and igmp6 (Go's Interface.MulticastAddrs reads them) while held. */
static void memberships(void) {
  int u4 = socket(AF_INET, SOCK_DGRAM, 0), u6 = socket(AF_INET6, SOCK_DGRAM, 0);
  struct ip_mreqn m4 = {.imr_multiaddr.s_addr = htonl(0xef010203), .imr_ifindex = (int)if_nametoindex("lo")};
  struct ipv6_mreq m6 = {.ipv6mr_interface = if_nametoindex("lo")};
  inet_pton(AF_INET6, "ff02::114", &m6.ipv6mr_multiaddr);
  printf("igmp: join 239.1.2.3 on lo %d, ff02::114 %d\n", setsockopt(u4, IPPROTO_IP, IP_ADD_MEMBERSHIP, &m4, sizeof m4),
         setsockopt(u6, IPPROTO_IPV6, IPV6_ADD_MEMBERSHIP, &m6, sizeof m6));
  printf("igmp: listed while joined %d %d\n", listed("igmp", "030201EF"),
         listed("igmp6", "ff020000000000000000000000000114"));
  close(u4);
  close(u6);
  printf("igmp: listed after close %d %d\n", listed("igmp", "030201EF"),
         listed("igmp6", "ff020000000000000000000000000114"));
}

/* A request NETLINK_ROUTE does not know gets NLMSG_ERROR with EOPNOTSUPP and the request echoed (the headers are
 * spelled out here: musl-gcc has no <linux/netlink.h>). */
static void unknown_request(void) {
  struct {
    unsigned len;
    unsigned short type, flags;
    unsigned seq, pid;
    unsigned char family, pad[3];
  } req = {sizeof req, 0x3ff, 0x1 | 0x300, 7, 0, 0, {0}};
  int s = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, 0);
  struct {
    unsigned short family, pad;
    unsigned port, groups;
  } kernel = {AF_NETLINK, 0, 0, 0}, me;
  long sent = sendto(s, &req, sizeof req, 0, (struct sockaddr *)&kernel, sizeof kernel);
  unsigned char buf[4096];
  long n = recv(s, buf, sizeof buf, 0);
  unsigned short type;
  unsigned seq;
  int error;
  memcpy(&type, buf + 4, 2);
  memcpy(&seq, buf + 8, 4);
  memcpy(&error, buf + 16, 4);
  printf("raw: request of %ld bytes answered with %ld: type %d, seq %u, error %d\n", sent, n, type, seq, error);
  socklen_t len = sizeof me;
  getsockname(s, (struct sockaddr *)&me, &len);
  printf("raw: getsockname family %d, length %u, port %s\n", me.family, len, me.port ? "set" : "0");
  int connected = connect(s, (struct sockaddr *)&kernel, sizeof kernel);
  len = sizeof me;
  int peer = getpeername(s, (struct sockaddr *)&me, &len);
  printf("raw: connect to the kernel %d, getpeername %d family %d port %u\n", connected, peer, me.family, me.port);
  close(s);
}

int main(int argc, char **argv) {
  int all = argc > 1 && strcmp(argv[1], "all") == 0;
  struct ifaddrs *list;
  if (getifaddrs(&list) < 0) {
    perror("getifaddrs");
    return 1;
  }
  int lo_v4 = 0, lo_v6 = 0, lo_link = 0;
  for (struct ifaddrs *i = list; i; i = i->ifa_next) {
    int lo = strcmp(i->ifa_name, "lo") == 0;
    if (!lo && !all) continue;
    if (!i->ifa_addr) {
      printf("%s: no address\n", i->ifa_name);
      continue;
    }
    char text[INET6_ADDRSTRLEN] = "";
    switch (i->ifa_addr->sa_family) {
      case AF_INET:
        inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, text, sizeof text);
        printf("%s: inet %s/%d%s\n", i->ifa_name, text, prefix_len(i->ifa_netmask),
               i->ifa_flags & IFF_UP ? " up" : "");
        lo_v4 |= lo && strcmp(text, "127.0.0.1") == 0 && prefix_len(i->ifa_netmask) == 8;
        break;
      case AF_INET6:
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)i->ifa_addr)->sin6_addr, text, sizeof text);
        /* Link-local addresses (fe80::) differ from host to host; Kiln has none. */
        if (strncmp(text, "fe80:", 5) == 0) continue;
        printf("%s: inet6 %s/%d\n", i->ifa_name, text, prefix_len(i->ifa_netmask));
        lo_v6 |= lo && strcmp(text, "::1") == 0 && prefix_len(i->ifa_netmask) == 128;
        break;
      case AF_PACKET: {
        struct sockaddr_ll *ll = (struct sockaddr_ll *)i->ifa_addr;
        printf("%s: link%s%s%s, hardware address of %d bytes%s\n", i->ifa_name, i->ifa_flags & IFF_UP ? " up" : "",
               i->ifa_flags & IFF_LOOPBACK ? " loopback" : "", i->ifa_flags & IFF_RUNNING ? " running" : "",
               ll->sll_halen, lo ? "" : (ll->sll_addr[0] | ll->sll_addr[1] | ll->sll_addr[2]) ? ", not zero" : ", zero");
        lo_link |= lo && (i->ifa_flags & (IFF_UP | IFF_LOOPBACK)) == (IFF_UP | IFF_LOOPBACK);
        break;
      }
      default:
        printf("%s: family %d\n", i->ifa_name, i->ifa_addr->sa_family);
    }
  }
  freeifaddrs(list);
  struct if_nameindex *names = if_nameindex();
  int lo_named = 0;
  for (struct if_nameindex *n = names; n && n->if_index; n++) {
    if (strcmp(n->if_name, "lo") == 0) lo_named = n->if_index > 0;
    else if (all) printf("if_nameindex: %s has index %s\n", n->if_name, n->if_index > 1 ? "above 1" : "1 or less");
  }
  if (names) if_freenameindex(names);
  printf("if_nameindex: lo %s\n", lo_named ? "present" : "missing");
  /* These two ask the SIOCGIFINDEX and SIOCGIFNAME ioctls of a socket. */
  char name[IF_NAMESIZE] = "";
  unsigned lo_index = if_nametoindex("lo");
  printf("if_nametoindex: lo is %u, nonexistent0 is %u\n", lo_index, if_nametoindex("nonexistent0"));
  printf("if_indextoname: %u is %s\n", lo_index, if_indextoname(lo_index, name) ? name : "(none)");
  memberships();
  unknown_request();
  printf("netlink: lo link %d, 127.0.0.1/8 %d, ::1/128 %d\n", lo_link, lo_v4, lo_v6);
  return lo_link && lo_v4 && lo_v6 && lo_named && lo_index ? 0 : 1;
}
