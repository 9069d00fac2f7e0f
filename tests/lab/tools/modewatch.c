/* modewatch ROOT...: prints "<octal mode> <path>" for every file and directory that appears
 * under the ROOTs (created, or renamed into place), read with lstat the moment inotify
 * reports it, one line each, flushed, until SIGTERM. New subdirectories are watched too; a
 * ROOT that does not exist yet is looked for every 5 ms and scanned when it appears.
 *
 * Used by the lab tests to see the mode a secret has while clusterctl uploads it: an upload
 * that created its file under the host's umask (0644) and chmod'ed it later showed 0644 here
 * for the whole time between the two (its data, its sha256 check), which inotify reports
 * within microseconds of the create. Built static on the machine (gcc -static) and copied
 * into the hosts, which have no inotify tools. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAXW 65536
static int fd;
static char *watched[MAXW];

static void report(const char *path);

static void watch_dir(const char *dir) {
	int wd = inotify_add_watch(fd, dir, IN_CREATE | IN_MOVED_TO | IN_ONLYDIR);
	if (wd < 0 || wd >= MAXW) return;
	if (watched[wd]) return; /* already watched */
	watched[wd] = strdup(dir);
	/* What appeared before the watch existed. */
	DIR *d = opendir(dir);
	if (!d) return;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
		char p[PATH_MAX];
		snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
		report(p);
	}
	closedir(d);
}

static void report(const char *path) {
	struct stat st;
	if (lstat(path, &st) != 0) return; /* gone already (a renamed temp file) */
	printf("%o %s\n", (unsigned)(st.st_mode & 07777), path);
	if (S_ISDIR(st.st_mode)) watch_dir(path);
}

int main(int argc, char **argv) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	fd = inotify_init1(IN_CLOEXEC);
	if (fd < 0) { perror("inotify_init1"); return 1; }
	int pending = argc - 1;
	char found[256] = {0};
	for (;;) {
		for (int i = 1; i < argc && i < 256; i++) {
			if (found[i]) continue;
			struct stat st;
			if (stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode)) {
				found[i] = 1;
				pending--;
				printf("%o %s\n", (unsigned)(st.st_mode & 07777), argv[i]);
				watch_dir(argv[i]);
			}
		}
		struct pollfd p = {.fd = fd, .events = POLLIN};
		int r = poll(&p, 1, pending > 0 ? 5 : -1);
		if (r < 0 && errno != EINTR) { perror("poll"); return 1; }
		if (r <= 0) continue;
		char buf[65536] __attribute__((aligned(__alignof__(struct inotify_event))));
		ssize_t n = read(fd, buf, sizeof buf);
		for (char *q = buf; n > 0 && q < buf + n;) {
			struct inotify_event *ev = (struct inotify_event *)q;
			if (ev->len && ev->wd >= 0 && ev->wd < MAXW && watched[ev->wd]) {
				char path[PATH_MAX];
				snprintf(path, sizeof path, "%s/%s", watched[ev->wd], ev->name);
				report(path);
			}
			if (ev->mask & IN_Q_OVERFLOW) printf("overflow\n");
			q += sizeof *ev + ev->len;
		}
	}
}
