#!/usr/bin/perl
# The Debian 13 package in Debian 13's nginx, in the trixie chroot that
# make deb-trixie built it in: installs build/trixie/*.deb there with apt,
# checks its Depends names that nginx's ABI, that `nginx -t` with Debian 13's
# /etc/nginx/nginx.conf loads the module and takes a configuration using it,
# serves a request through the chroot's nginx with the module enabled by the
# package (modules-enabled) that gets a token from the fake token endpoint
# (CloudAuth::FakeGoogle, run outside the chroot: both share the network) and
# injects it, then removes and purges the package and checks that the
# chroot's /etc/nginx is as it was. Run by `make test-deb-trixie`, as root.
#
# Environment: CLOUDAUTH_CHROOT (default build/chroot/trixie),
# CLOUDAUTH_DEB_DIR (default build/trixie).
#
# The chroot's nginx runs only while this test serves its request, started
# directly (chroot DIR nginx, no systemd; the chroot's policy-rc.d keeps the
# package scripts from starting or reloading it) and stopped by the harness.
# Test files live in the chroot's /tmp; a relative link inside the chroot
# named like the chroot's own path on the host makes every path the harness
# writes into nginx.conf mean the same file inside and outside.

use strict;
use warnings;
use Test::More;
use Cwd qw(abs_path);
use File::Basename qw(dirname basename);
use File::Copy qw(copy);
use File::Temp qw(tempdir);

my $root;
BEGIN { $root = abs_path(dirname(abs_path(__FILE__)) . '/..') }
use lib "$root/t/lib";

my $pkg     = 'libnginx-mod-http-cloudauth';
my $chroot  = abs_path($ENV{CLOUDAUTH_CHROOT} || "$root/build/chroot/trixie");
my $debdir  = $ENV{CLOUDAUTH_DEB_DIR} || "$root/build/trixie";
my $etc     = '/etc/nginx';
my $enabled = "$etc/modules-enabled";
my $link    = "$enabled/50-mod-http-cloudauth.conf";
my $avail   = '/usr/share/nginx/modules-available/mod-http-cloudauth.conf';
my $so      = '/usr/lib/nginx/modules/ngx_http_cloudauth_module.so';
my $snippet = "$etc/conf.d/zz-cloudauth-deb-test-$$.conf";

$ENV{PATH} = "/usr/sbin:/sbin:$ENV{PATH}";

# a command's exit code and its output (stdout and stderr)
sub run {
    my $cmd = join ' ', @_;
    my $out = `$cmd 2>&1`;
    return ($? >> 8, $out // '');
}

# the same, inside the chroot (with /proc mounted while it runs)
sub in_chroot { run("$root/tools/chroot.sh run $chroot", @_) }

sub ok_chroot {
    my ($name, @cmd) = @_;
    my ($rc, $out) = in_chroot(@cmd);
    ok($rc == 0, $name) or diag("@cmd: exit $rc\n$out");
    return $out;
}

sub status {
    my ($rc, $out) = in_chroot("dpkg-query -W -f='\${db:Status-Abbrev}' $pkg");
    $out =~ s/\s+$//;
    return $rc == 0 ? $out : '';
}

# a directory of the chroot as names, types, link targets and contents
sub snapshot {
    my ($dir) = @_;
    $dir = "$chroot$dir";
    my ($rc, $out) = run("cd $dir && find . -printf '%p %y %m %l\\n' | sort");
    my (undef, $sums) = run("cd $dir && find . -type f -print0 | sort -z"
                            . " | xargs -0r md5sum");
    return "$out$sums";
}

sub write_file {
    my ($path, $text, $mode) = @_;
    open my $fh, '>', $path or die "$path: $!";
    print $fh $text;
    close $fh or die "$path: $!";
    chmod $mode, $path if defined $mode;
}

$> == 0 or BAIL_OUT('needs root: chroot, mount, apt in the chroot');
-f "$chroot/.cloudauth-chroot"
    or BAIL_OUT("no chroot in $chroot (make deb-trixie makes it)");
my @debs = glob "$debdir/${pkg}_*.deb";
@debs == 1 or BAIL_OUT("want one $debdir/${pkg}_*.deb (make deb-trixie),"
                       . " found " . scalar(@debs));
my $deb = $debs[0];
my $deb_in = '/tmp/' . basename($deb);

-x "$chroot/usr/sbin/nginx" or BAIL_OUT("no nginx in $chroot");
status() eq '' || status() =~ /^un/
    or BAIL_OUT("$pkg is in the chroot already (" . status() . "): purge it"
                . " there first (tools/chroot.sh run $chroot apt-get purge"
                . " -y $pkg)");
-e "$chroot$snippet" and BAIL_OUT("$chroot$snippet exists");

# the link that makes the chroot's host path lead to its root inside it
(my $alias = "$chroot$chroot") =~ s{/+$}{};
-e $alias || -l $alias and BAIL_OUT("$alias exists");
my @made;

my ($t, $installed, $purged);

# interrupted, it still cleans up (END)
$SIG{$_} = sub { die "killed\n" } for qw(INT TERM HUP);

END {
    # stop nginx and the fakes, leave the chroot as it was, whatever failed
    $t->DESTROY if $t;
    undef $t;
    unlink "$chroot$snippet" if -e "$chroot$snippet";
    unlink "$chroot$deb_in" if -e "$chroot$deb_in";
    unlink $alias if -l $alias;
    rmdir $_ for reverse @made;
    in_chroot("apt-get purge -y -q $pkg >/dev/null 2>&1")
        if $installed && !$purged;
}

# --- the chroot is Debian 13 with its nginx ---------------------------------

like(do { local (@ARGV, $/) = "$chroot/etc/debian_version"; <> },
     qr/^13\b/, 'the chroot is Debian 13');
like((in_chroot('nginx -v'))[1], qr{nginx/1\.26\.}, "its nginx is 1.26");

my $before_enabled = snapshot($enabled);
my $before_etc = snapshot($etc);

ok_chroot('nginx -t passes before the package is installed', 'nginx -t');

# --- install ---------------------------------------------------------------

my $version = (run("dpkg-deb -f $deb Version"))[1];
chomp $version;
like($version, qr/\+deb13$/, "version $version is the Debian 13 build");
my $depends = (run("dpkg-deb -f $deb Depends"))[1];
chomp $depends;
diag("Depends: $depends");
my ($abi) = (in_chroot("dpkg-query -W -f='\${Provides}' nginx"))[1]
            =~ /(nginx-abi-[^,\s]+)/;
like($abi // '', qr/^nginx-abi-1\.26\.3-/, "trixie's nginx provides "
     . ($abi // 'no ABI'));
like($depends, qr/(^|, )\Q$abi\E(,|$)/, "Depends names it")
    if defined $abi;
like($depends, qr/libcurl4t64/, 'Depends has libcurl (trixie: libcurl4t64)');
like($depends, qr/libjansson4/, 'Depends has jansson');
like($depends, qr/libssl3t64/, 'Depends has OpenSSL (trixie: libssl3t64)');

copy($deb, "$chroot$deb_in") or die "$deb: $!";
$installed = 1;
ok_chroot("apt-get install $deb_in", "apt-get install -y -q $deb_in");
is(status(), 'ii', "$pkg is installed");
is((in_chroot("dpkg-query -W -f='\${Version}' $pkg"))[1], $version,
   "version $version");

ok(-f "$chroot$so", $so);
ok(-f "$chroot/usr/share/libnginx-mod-http-cloudauth/html/upload.html",
   'upload page');
ok(-f "$chroot/usr/share/doc/$pkg/examples/conf.example", 'conf.example');
is(readlink("$chroot$link"), $avail, "$link -> $avail");
is(do { local (@ARGV, $/) = "$chroot$avail"; <> },
   "load_module modules/ngx_http_cloudauth_module.so;\n",
   'the load_module line');

# --- Debian 13's nginx.conf loads it ---------------------------------------

ok_chroot("nginx -t with $etc/nginx.conf and the module", 'nginx -t');
my $dump = ok_chroot('nginx -T', 'nginx -T');
like($dump, qr{^# configuration file \Q$link\E:\nload_module modules/ngx_http_cloudauth_module\.so;}m,
     'nginx -T: the module is loaded from modules-enabled');

# --- a request served through it -------------------------------------------

# the harness's files (PKI, key, fakes' state, nginx.conf) in the chroot
for (my $d = dirname($alias); !-e $d; $d = dirname($d)) {
    unshift @made, $d;
}
system('mkdir', '-p', dirname($alias)) == 0 or die "mkdir: $!";
my $depth = () = $chroot =~ m{/[^/]+}g;
symlink(join('/', ('..') x ($depth - 1)) || '.', $alias)
    or die "$alias: $!";
is(abs_path("$alias/etc/debian_version"),
   abs_path("$chroot/etc/debian_version"), 'the path alias leads home');

my $bin = tempdir('cloudauth-deb-XXXXXX', TMPDIR => 1, CLEANUP => 1);
write_file("$bin/nginx", "#!/bin/sh\nexec chroot $chroot /usr/sbin/nginx"
                         . ' "$@"' . "\n", 0755);
$ENV{TEST_NGINX_BINARY} = "$bin/nginx";

require CloudAuth::Test;
{
    local $ENV{TMPDIR} = "$chroot/tmp";
    $t = CloudAuth::Test->new;
}

# a configuration using it, in conf.d (inside http{} of Debian's nginx.conf)
my $conf = <<'END';
# written by ngx_cloudauth's tdeb/020-trixie.t, removed when it ends
cloudauth_zone 1m;
cloudauth_trusted_certificate %%CA%%;
cloudauth_credential cloudauth_deb_test type=google_service_account
                     key_file=KEY_FILE scopes=%%SCOPES%%;

server {
    # checked with nginx -t only, never served
    listen 127.0.0.1:65080;
    server_name cloudauth-deb-test.invalid;

    location /storage/ {
        cloudauth cloudauth_deb_test;
        proxy_pass https://127.0.0.1:9/storage/v1/;  # no DNS lookup
    }

    location /upload/ {
        cloudauth_gcs_upload cloudauth_deb_test bucket=deb-test
                             object=uploads/$cloudauth_filename;
    }

    location / {
        root /usr/share/libnginx-mod-http-cloudauth/html;
        index upload.html;
    }

    location = /cloudauth/status {
        allow 127.0.0.1;
        deny all;
        cloudauth_status;
    }
}
END
$conf = $t->expand($conf);

(my $good = $conf) =~ s/KEY_FILE/%%KEY_FILE%%/;
write_file("$chroot$snippet", $t->expand($good));
ok_chroot('nginx -t: cloudauth_zone, a credential, cloudauth, upload, status',
          'nginx -t');
like((in_chroot('nginx -T'))[1], qr/^# configuration file \Q$snippet\E:/m,
     'nginx -T: the snippet was read');

# the module checks what it is given: a missing key file fails nginx -t
(my $bad = $conf) =~ s/KEY_FILE/%%TESTDIR%%\/missing.json/;
write_file("$chroot$snippet", $t->expand($bad));
my ($rc, $out) = in_chroot('nginx -t');
isnt($rc, 0, 'nginx -t fails with a missing key file');
like($out, qr/missing\.json/, '... naming the file') or diag($out);

unlink "$chroot$snippet" or die "$chroot$snippet: $!";
ok_chroot('nginx -t without the snippet', 'nginx -t');

# nginx serving on a free loopback port (Debian's nginx.conf would take
# port 80, which is the machine's): its own configuration, the module loaded
# as Debian's nginx.conf loads it, from modules-enabled. The harness runs
# nginx with its test directory as the prefix (-p), where the load_module
# line's relative "modules/" is then looked for: a link to where it is, as
# Debian's own prefix /usr/share/nginx has one
symlink('/usr/lib/nginx/modules', $t->dir . '/modules')
    or die $t->dir . "/modules: $!";
eval {
    $t->run(<<'END', raw => 1);
include /etc/nginx/modules-enabled/*.conf;

worker_processes 2;
master_process on;
daemon off;
error_log %%TESTDIR%%/error.log info;
pid %%TESTDIR%%/nginx.pid;

events {
    worker_connections 64;
}

http {
    access_log %%TESTDIR%%/access.log;

    client_body_temp_path %%TESTDIR%%/body;
    proxy_temp_path %%TESTDIR%%/proxy;
    fastcgi_temp_path %%TESTDIR%%/fastcgi;
    uwsgi_temp_path %%TESTDIR%%/uwsgi;
    scgi_temp_path %%TESTDIR%%/scgi;

    cloudauth_zone 1m;
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 10s;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /api/ {
            cloudauth google;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }
    }
}
END
    1;
} or do { diag($@); BAIL_OUT("the chroot's nginx did not start") };

my $r = $t->http_get('/api/x', Authorization => 'Basic dXNlcjpwYXNz');
is($r->{status}, 200, 'a request proxied by the chroot\'s nginx')
    or diag($r->{error} // $r->{raw});
my ($token) = $t->issued_tokens;
ok(defined $token, 'the module got a token from the fake endpoint');
is($r->{headers}{'x-echo-authorization'}, 'Bearer ' . ($token // '?'),
   'and injected it, in place of the client\'s Authorization');
is($t->token_count, 1, 'one token request');
$t->token_verified_ok('the fake endpoint verified the signed assertion');
$t->check_log_ok('nginx stopped; no alert, crit or emerg');
is(join(', ', $t->leaks), '', 'no secret in the logs');
$t->DESTROY;
undef $t;

unlink $alias or die "$alias: $!";
rmdir $_ or die "$_: $!" for reverse @made;
@made = ();

# --- remove, then purge -----------------------------------------------------

# remove keeps the admin's choice as a disabled link (dh_nginx's scripts)
ok_chroot("apt-get remove $pkg", "apt-get remove -y -q $pkg");
ok(!-e "$chroot$link" && -l "$chroot$link.removed",
   "removed: $link is now $link.removed");
ok_chroot('nginx -t after the remove', 'nginx -t');

ok_chroot("apt-get purge $pkg", "apt-get purge -y -q $pkg");
$purged = 1;
like(status(), qr/^(un|)$/, "$pkg is gone");
ok(!-e "$chroot$so", "$so removed");
ok(!-e "$chroot$link" && !-l "$chroot$link" && !-l "$chroot$link.removed",
   "$link removed");

is(snapshot($enabled), $before_enabled, "$enabled as before");
is(snapshot($etc), $before_etc, "$etc as before");
ok_chroot('nginx -t after the purge', 'nginx -t');

done_testing();
