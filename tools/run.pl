#!/usr/bin/perl

# make run: nginx in the foreground with conf.example on 127.0.0.1:8080.
#
# With GOOGLE_APPLICATION_CREDENTIALS=/path/key.json the Google credential
# uses that key against real Google, and the locations proxy to the real
# APIs.  Without it, the bundled local stand-ins are started first (the
# test suite's fakes: Google's token endpoint over TLS with a CA made for
# the run, and an echo upstream that shows the Authorization it got), and
# the configuration is pointed at them, so that
#
#     curl http://127.0.0.1:8080/storage/b
#
# shows an injected token at once.  Uploads (the page at / and /upload/) go
# to the suite's fake Cloud Storage, which keeps the objects in the run's
# temporary directory.  Zoom's token endpoint has a stand-in too.  Ctrl-C
# stops everything.
#
# With real credentials, ZOOM_ACCOUNT_ID, ZOOM_CLIENT_ID and
# ZOOM_CLIENT_SECRET_FILE give the Zoom app (else /zoom/ is left out), and
# CLOUDAUTH_BUCKET the bucket uploads go to.
#
# CLOUDAUTH_PORT (8080) is the port, CLOUDAUTH_RUN_PREFIX (build/run) the
# directory of nginx.conf, the pid file and the logs, CLOUDAUTH_NGINX
# (/usr/sbin/nginx) and CLOUDAUTH_MODULE the nginx and module run.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/../t/lib";

use CloudAuth::Test;
use CloudAuth::Upload;
use CloudAuth::FakeProviders;
use File::Path qw(make_path);
use File::Temp qw(tempdir);
use POSIX ();

my $root = $CloudAuth::Test::ROOT;
my $module = $ENV{CLOUDAUTH_MODULE} || "$root/build/ngx_http_cloudauth_module.so";
my $prefix = $ENV{CLOUDAUTH_RUN_PREFIX} || "$root/build/run";
my $port = $ENV{CLOUDAUTH_PORT} || 8080;
my $key = $ENV{GOOGLE_APPLICATION_CREDENTIALS};

make_path("$prefix/logs");

open my $fh, '<', "$root/conf.example" or die "conf.example: $!\n";
my $conf = do { local $/; <$fh> };
close $fh;

my $t;
my @notes;

if ($key) {
    -r $key or die "GOOGLE_APPLICATION_CREDENTIALS: cannot read $key\n";
    $conf =~ s{key_file=\S+}{key_file=$key}g;
    push @notes, "Google credential: $key, against real Google";

    # Zoom too when its app is given, else without the Zoom location
    if ($ENV{ZOOM_ACCOUNT_ID} && $ENV{ZOOM_CLIENT_ID}
        && $ENV{ZOOM_CLIENT_SECRET_FILE})
    {
        $conf =~ s{ZOOM_ACCOUNT_ID}{$ENV{ZOOM_ACCOUNT_ID}}g;
        $conf =~ s{ZOOM_CLIENT_ID}{$ENV{ZOOM_CLIENT_ID}}g;
        $conf =~ s{client_secret_file=\S+zoom\.secret}
                  {client_secret_file=$ENV{ZOOM_CLIENT_SECRET_FILE}}g;
        push @notes, "Zoom app: $ENV{ZOOM_CLIENT_ID}, against real Zoom";

    } else {
        $conf =~ s{\n    # A Zoom Server-to-Server.*?zoom\.secret;\n}{\n}s;
        $conf =~ s{\n        # Zoom, side by side.*?\n        \}\n}{\n}s;
        push @notes, 'no ZOOM_ACCOUNT_ID, ZOOM_CLIENT_ID and '
                     . 'ZOOM_CLIENT_SECRET_FILE: no /zoom/ location';
    }

    if ($ENV{CLOUDAUTH_BUCKET}) {
        $conf =~ s{bucket=my-bucket}{bucket=$ENV{CLOUDAUTH_BUCKET}}g;
    }

    push @notes, 'uploads go to bucket '
                 . ($ENV{CLOUDAUTH_BUCKET} // 'my-bucket (set CLOUDAUTH_BUCKET)');

} else {
    $t = CloudAuth::Test->new;
    my $up = $t->port('upstream');
    my $dir = $t->dir;

    $conf =~ s{key_file=\S+}{key_file=$dir/sa.json}g;

    # the stand-in token endpoint checks the scopes each credential asks for
    $t->token_set(expect_scopes => [ map { s/,/ /gr }
                                     $conf =~ /\bscopes=([^\s;]+)/g ]);
    $conf =~ s{(cloudauth_timeout[^;]*;)}
              {$1\n    cloudauth_trusted_certificate $dir/ca.crt;};
    $conf =~ s{proxy_pass\s+https://[^;]+;}{proxy_pass http://127.0.0.1:$up;}g;

    # Zoom: the suite's fake Zoom token endpoint, with a made-up app
    my ($zid, $zsecret, $zacct) = ('standin-client', 'standin-secret-'
        . CloudAuth::FakeGoogle::random_hex(16), 'standin-account');
    $t->write_file('zoom.secret', "$zsecret\n", 0600);
    CloudAuth::FakeProviders::start($t, 'zoom',
        apps => { $zid => { secret => $zsecret, account_id => $zacct } });
    my $zurl = 'https://127.0.0.1:' . $t->port('zoom') . '/oauth/token';
    $conf =~ s{account_id=ZOOM_ACCOUNT_ID}{account_id=$zacct}g;
    $conf =~ s{client_id=ZOOM_CLIENT_ID}{client_id=$zid}g;
    $conf =~ s{client_secret_file=\S+zoom\.secret}
              {client_secret_file=$dir/zoom.secret token_url=$zurl}g;

    # uploads go to the suite's fake Cloud Storage, over TLS with that CA
    my $gcs = CloudAuth::Upload::start_gcs($t);
    $conf =~ s{(cloudauth_gcs_upload\s[^;]*?)\s*;}{$1 endpoint=$gcs;}g;

    push @notes,
        'no GOOGLE_APPLICATION_CREDENTIALS: using the local stand-ins',
        '  token endpoint ' . $t->token_url . " (CA $dir/ca.crt)",
        "  echo upstream  http://127.0.0.1:$up (shows what it received)",
        "  zoom token     $zurl",
        "  cloud storage  $gcs, a fake; until Ctrl-C it keeps each",
        "                 uploaded object in $dir/gcs/objects/BUCKET/",
        '                 as HEX.data, its name, size and CRC32C in HEX.json';
}

# What the workers read or write at run time (the page, the CA, temporary
# files) lives in a directory of the run's own in /tmp, open to all: nginx
# started as root runs its workers as nobody, and the checkout may sit where
# nobody cannot enter (a clone in /root, which is 0700 on Debian).  The
# master alone reads the configuration and the keys and opens the logs, so
# those may stay in build/run/.
my $rundir = $t ? $t->dir : tempdir('cloudauth-run-XXXXXX', TMPDIR => 1,
                                    CLEANUP => 1);
chmod 0755, $rundir;
system('cp', '-R', "$root/html", "$rundir/") == 0
    && system('chmod', '-R', 'a+rX', "$rundir/html") == 0
    or die "cannot copy html/ to $rundir\n";

$conf =~ s{listen\s+127\.0\.0\.1:8080}{listen 127.0.0.1:$port}g;
$conf =~ s{root\s+html;}{root $rundir/html;}g;

$conf = <<"EOF2" . $conf;
load_module $module;
daemon off;
master_process on;
pid $prefix/nginx.pid;
error_log stderr info;

EOF2

$conf =~ s{(http\s*\{)}{$1
    client_body_temp_path $rundir/body;
    proxy_temp_path $rundir/proxy;
    fastcgi_temp_path $rundir/fastcgi;
    uwsgi_temp_path $rundir/uwsgi;
    scgi_temp_path $rundir/scgi;
};

open $fh, '>', "$prefix/nginx.conf" or die "$prefix/nginx.conf: $!\n";
print $fh $conf;
close $fh;

print "$_\n" for @notes;
print "run directory (page, temporary files): $rundir\n";
print <<"EOF2";
nginx: $prefix/nginx.conf on http://127.0.0.1:$port/  (Ctrl-C stops)
  curl http://127.0.0.1:$port/storage/b
  curl -H 'X-User-Email: alice\@example.com' http://127.0.0.1:$port/drive/files
  curl http://127.0.0.1:$port/cloudauth/status
  curl -T some.file http://127.0.0.1:$port/upload/some.file
  open http://127.0.0.1:$port/ in a browser to upload files from the page

EOF2

my @cmd = ($ENV{CLOUDAUTH_NGINX} || '/usr/sbin/nginx',
           '-e', 'stderr', '-p', "$prefix/",
           '-c', "$prefix/nginx.conf");

# the ASan runtime, for the suite's run under AddressSanitizer
local $ENV{LD_PRELOAD} = $ENV{CLOUDAUTH_PRELOAD} if $ENV{CLOUDAUTH_PRELOAD};

# nginx takes NGINX for inherited listening sockets (a binary upgrade)
delete $ENV{NGINX};

system(@cmd, '-t', '-q') == 0 or do {
    $t->stop_fakes if $t;
    exit 1;
};

my $pid = fork // die "fork: $!\n";

if (!$pid) {
    { no warnings 'exec'; exec @cmd; }
    POSIX::_exit(127);
}

$SIG{INT} = $SIG{TERM} = sub { kill 'QUIT', $pid };

waitpid $pid, 0;
my $rc = $? >> 8;

$t->stop_fakes if $t;
exit $rc;
