# Installs KF_SRC into KF_DEST (relative: under the prefix) with the host paths it names rewritten
# to the layout being installed; run by install(CODE) from deploy/CMakeLists.txt, so that
# `cmake --install --prefix P` gets P's paths, not the configure-time prefix's.
# The sources name the Debian paths (/usr/sbin/keyfleet..., /usr/lib/keyfleet/...) where they mean
# the host's installed files; paths inside the initramfs image (copy destinations, the dracut
# service) are the image's own and are left alone: only the forms below are host paths.
foreach(var KF_SBINDIR KF_PKGLIBDIR KF_DEST)
  if(NOT IS_ABSOLUTE "${${var}}")
    set(${var} "${CMAKE_INSTALL_PREFIX}/${${var}}")
  endif()
endforeach()
file(READ "${KF_SRC}" text)
string(REPLACE "=/usr/sbin/keyfleet" "=${KF_SBINDIR}/keyfleet" text "${text}")
string(REPLACE ":-/usr/sbin/keyfleet" ":-${KF_SBINDIR}/keyfleet" text "${text}")
string(REPLACE ":-/usr/lib/keyfleet/" ":-${KF_PKGLIBDIR}/" text "${text}")
get_filename_component(name "${KF_SRC}" NAME)
set(staged "${KF_STAGE_DIR}/${name}")
file(WRITE "${staged}" "${text}")
if(KF_PROGRAM)
  set(perms OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)
else()
  set(perms OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
endif()
file(INSTALL DESTINATION "${KF_DEST}" TYPE FILE PERMISSIONS ${perms} FILES "${staged}")
