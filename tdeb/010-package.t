#!/usr/bin/perl
# The Debian package in Debian's own nginx: installs build/*.deb with apt,
# checks that `nginx -t` with /etc/nginx/nginx.conf loads the module and takes
# a configuration using it, purges it, and checks that /etc/nginx is as it
# was. Run by `make test-deb` (prove tdeb/), as root; never starts, stops or
# reloads nginx itself (the package's dpkg trigger reloads a running nginx,
# as any libnginx-mod-* does). Kept out of t/: `make test` does not run it.

use strict;
use warnings;
use Test::More;
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Temp qw(tempdir);
use JSON::PP;

my $pkg     = 'libnginx-mod-http-cloudauth';
my $root    = abs_path(dirname(__FILE__) . '/..');
my $etc     = '/etc/nginx';
my $enabled = "$etc/modules-enabled";
my $link    = "$enabled/50-mod-http-cloudauth.conf";
my $avail   = '/usr/share/nginx/modules-available/mod-http-cloudauth.conf';
my $so      = '/usr/lib/nginx/modules/ngx_http_cloudauth_module.so';
my $snippet = "$etc/conf.d/zz-cloudauth-deb-test-$$.conf";

$ENV{DEBIAN_FRONTEND} = 'noninteractive';
$ENV{PATH} = "/usr/sbin:/sbin:$ENV{PATH}";

# a command's exit code and its output (stdout and stderr)
sub run {
    my $cmd = join ' ', @_;
    my $out = `$cmd 2>&1`;
    return ($? >> 8, $out // '');
}

sub ok_run {
    my ($name, @cmd) = @_;
    my ($rc, $out) = run(@cmd);
    ok($rc == 0, $name) or diag("@cmd: exit $rc\n$out");
    return $out;
}

sub status {
    my ($rc, $out) = run("dpkg-query -W -f='\${db:Status-Abbrev}' $pkg");
    $out =~ s/\s+$//;
    return $rc == 0 ? $out : '';
}

# /etc/nginx as names, types, link targets and contents
sub snapshot {
    my ($dir) = @_;
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

my @debs = glob "$root/build/${pkg}_*.deb";
@debs == 1 or BAIL_OUT("want one build/${pkg}_*.deb (make deb), found "
                       . scalar(@debs));
my $deb = $debs[0];

$> == 0 or BAIL_OUT('needs root: it installs and purges the package');
-x '/usr/sbin/nginx' or BAIL_OUT("Debian's nginx is not installed");
status() eq '' || status() =~ /^un/
    or BAIL_OUT("$pkg is on this machine already (" . status() . "): the"
                . " test would replace and purge it; apt-get purge $pkg first");
-e $snippet and BAIL_OUT("$snippet exists");
-d "$etc/conf.d" or BAIL_OUT("no $etc/conf.d");

my ($installed, $purged);

END {
    # leave /etc/nginx as it was, whatever failed
    unlink $snippet if defined $snippet && -e $snippet;
    system("apt-get purge -y -q $pkg >/dev/null 2>&1")
        if $installed && !$purged;
}

my $before_enabled = snapshot($enabled);
my $before_etc = snapshot($etc);

ok_run("nginx -t passes before the package is installed", 'nginx -t');

# --- install ---------------------------------------------------------------

my $version = (run("dpkg-deb -f $deb Version"))[1];
chomp $version;
my $depends = (run("dpkg-deb -f $deb Depends"))[1];
chomp $depends;
my ($abi) = (run("dpkg-query -W -f='\${Provides}' nginx"))[1]
            =~ /(nginx-abi-[^,\s]+)/;
ok(defined $abi, "the installed nginx provides an ABI")
    and like($depends, qr/(^|, )\Q$abi\E(,|$)/,
             "Depends names the installed nginx's ABI ($abi)");
like($depends, qr/libcurl4/, 'Depends has libcurl');
like($depends, qr/libjansson4/, 'Depends has jansson');
like($depends, qr/libssl3/, 'Depends has OpenSSL');

$installed = 1;
ok_run("apt-get install $deb", "apt-get install -y -q $deb");
is(status(), 'ii', "$pkg is installed");
is((run("dpkg-query -W -f='\${Version}' $pkg"))[1], $version, "version $version");

ok(-f $so, "$so");
ok(-f '/usr/share/libnginx-mod-http-cloudauth/html/upload.html', 'upload page');
ok(-f "/usr/share/doc/$pkg/examples/conf.example", 'conf.example');
ok(-f "/usr/share/doc/$pkg/README.md.gz", 'README');
is(readlink($link), $avail, "$link -> $avail");
is((run("cat $avail"))[1], "load_module modules/ngx_http_cloudauth_module.so;\n",
   'the load_module line');

# --- Debian's nginx.conf loads it ------------------------------------------

ok_run("nginx -t with $etc/nginx.conf and the module", 'nginx -t');
my $dump = ok_run('nginx -T', 'nginx -T');
like($dump, qr{^# configuration file \Q$link\E:\nload_module modules/ngx_http_cloudauth_module\.so;}m,
     'nginx -T: the module is loaded from modules-enabled');

# a configuration using it, in conf.d (inside http{} of Debian's nginx.conf)
my $dir = tempdir('cloudauth-deb-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my ($rc, $out) = run("openssl genrsa -out $dir/sa.pem 2048");
is($rc, 0, 'a test key') or diag($out);
my $pem = do { local $/; open my $fh, '<', "$dir/sa.pem" or die $!; <$fh> };
my $email = 'deb-test@cloudauth-test.iam.gserviceaccount.com';
write_file("$dir/sa.json", JSON::PP->new->canonical->pretty->encode({
    type => 'service_account',
    project_id => 'cloudauth-test',
    private_key_id => '0123456789abcdef0123456789abcdef01234567',
    private_key => $pem,
    client_email => $email,
    client_id => '100000000000000000001',
    token_uri => 'https://oauth2.googleapis.com/token',
}), 0600);

my $conf = <<"END";
# written by ngx_cloudauth's tdeb/010-package.t, removed when it ends
cloudauth_zone 1m;
cloudauth_credential cloudauth_deb_test type=google_service_account
                     key_file=KEY_FILE
                     scopes=https://www.googleapis.com/auth/devstorage.read_write;

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
                             object=uploads/\$cloudauth_filename;
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

(my $good = $conf) =~ s/KEY_FILE/$dir\/sa.json/;
write_file($snippet, $good);
ok_run('nginx -t: cloudauth_zone, a credential, cloudauth, upload, status',
       'nginx -t');
like((run('nginx -T'))[1], qr/^# configuration file \Q$snippet\E:/m,
     'nginx -T: the snippet was read');

# the module checks what it is given: a missing key file fails nginx -t
(my $bad = $conf) =~ s/KEY_FILE/$dir\/missing.json/;
write_file($snippet, $bad);
($rc, $out) = run('nginx -t');
isnt($rc, 0, 'nginx -t fails with a missing key file');
like($out, qr/\Q$dir\E\/missing\.json/, '... naming the file') or diag($out);

unlink $snippet or die "$snippet: $!";
ok_run('nginx -t without the snippet', 'nginx -t');

# --- remove, then purge -----------------------------------------------------

# remove keeps the admin's choice as a disabled link (dh_nginx's scripts)
ok_run("apt-get remove $pkg", "apt-get remove -y -q $pkg");
ok(!-e $link && -l "$link.removed", "removed: $link is now $link.removed");
ok_run('nginx -t after the remove', 'nginx -t');

ok_run("apt-get purge $pkg", "apt-get purge -y -q $pkg");
$purged = 1;
like(status(), qr/^(un|)$/, "$pkg is gone");
ok(!-e $so, "$so removed");
ok(!-e $link && !-l $link && !-l "$link.removed", "$link removed");

is(snapshot($enabled), $before_enabled, "$enabled as before");
is(snapshot($etc), $before_etc, "$etc as before");
ok_run('nginx -t after the purge', 'nginx -t');

done_testing();
