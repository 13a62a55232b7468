/* The CRI tests' no-new-privileges image: installed set-user-ID root, it
 * prints the effective uid it runs with ("Effective uid: 0" when the
 * set-uid bit took effect, the caller's uid under no_new_privs). */
#include <stdio.h>
#include <unistd.h>

int main(void)
{
	printf("Effective uid: %d\n", (int)geteuid());
	return 0;
}
