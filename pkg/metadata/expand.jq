# linuxkit-py/metadata: LinuxKit's JSON user-data (docs/metadata.md) turned into shell calls that
# /usr/bin/metadata sources: one call per line, every argument quoted with @sh, nothing else.
#   lk_dir PATH            a directory (made 0700, its perm applied by lk_chmod after its entries)
#   lk_file PERM PATH B64  a file with base64 content
#   lk_chmod PERM PATH     a directory's perm, deepest first
#   lk_refuse SHOWN WHY    an entry left out; SHOWN is its path as JSON (control characters escaped)
# PATH is relative to /run/config and made of names checked here: no "/", not "." or "..", no
# control characters, at most 255 bytes. perm: octal, at most 0777 (no set-id or sticky bits).

def good_name:
  length > 0 and . != "." and . != ".." and (utf8bytelength <= 255)
  and (test("[/\\p{Cc}]") | not);

def good_perm: . == null or . == "" or (type == "string" and test("^0{0,2}[0-7]{1,3}$"));

def perm_of($default): if . == null or . == "" then $default else ("000" + . | .[-3:]) end;

def refuse($path; $why): "lk_refuse \($path | join("/") | @json | @sh) \($why | @sh)";

def entry($path):
  ($path | join("/")) as $where |
  if ($path[-1] | good_name | not) then refuse($path; "not a plain file name")
  elif ($where | utf8bytelength) > 3000 then refuse($path; "path too long")
  elif type != "object" then refuse($path; "not an entry (an object with content or entries)")
  elif (.perm | good_perm | not) then refuse($path; "perm must be octal, at most 0777")
  elif has("content") and has("entries") then refuse($path; "both content and entries")
  elif has("content") then
    if (.content | type) != "string" then refuse($path; "content is not a string")
    else "lk_file \(.perm | perm_of("644") | @sh) \($where | @sh) \(.content | @base64 | @sh)" end
  elif has("entries") then
    if (.entries | type) != "object" then refuse($path; "entries is not an object")
    else
      "lk_dir \($where | @sh)",
      (.entries | to_entries[] | .key as $k | .value | entry($path + [$k])),
      "lk_chmod \(.perm | perm_of("755") | @sh) \($where | @sh)"
    end
  else refuse($path; "neither content nor entries") end;

if type == "object" then to_entries[] | .key as $k | .value | entry([$k])
else empty end
